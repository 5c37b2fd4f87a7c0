"""Training one model: the epoch loop (`loop.Training`), the step interface it drives (`steps`), and the
MLPs' hand-written fast step (`fastpath`) (the CNNs fold their first block in mtl_core/models/batchfold.py)."""
