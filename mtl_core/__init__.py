"""mtl_core: the Streamlit-free engine of the multi-task learning playground.

Data, tasks, models, training, metrics, prediction, the run store, the job runner and the CLI.
"""

__version__ = "0.1.0"
