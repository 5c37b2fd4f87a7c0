"""Training one model: the epoch loop (`loop.Training`), the step interface it drives (`steps`), and the
MLPs' hand-written fast step (`fastpath`) with the CNNs' folded first block (`batchfold`)."""
