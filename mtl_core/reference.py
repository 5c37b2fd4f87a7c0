"""The reference study's published figures (SPEC.md), for side-by-side display. Never used as results."""

SEED_STUDY = {
    "source": "MTL-vs-STL notebook, full MNIST, 20 epochs, its own machine",
    "rows": {
        "stl": {"params": 104_706, "train_seconds": 771.1, "best_avg": 0.9851},
        "hard": {"params": 52_386, "train_seconds": 393.25, "best_avg": 0.9844},
        "cross_stitch": {"params": 104_714, "train_seconds": 425.95, "best_avg": 0.9864},
    },
}
SEED_MODELS = ("stl", "hard", "cross_stitch")

# Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018), Table 3: MultiMNIST
# test accuracy in %, (left digit, right digit); Yu et al. 2020 (PCGrad), Appendix E, reran the same code.
# Each row: the name shown, the registry model and loss weighting that train it, and the published figures.
MULTIMNIST_STUDY = {
    "source": "Sener & Koltun 2018, Table 3; Yu et al. 2020, Appendix E (MultiMNIST, LeNet, test accuracy %)",
    "rows": (
        ("single task", "stl_lenet", "static", {"Sener & Koltun 2018": (97.23, 95.90)}),
        ("uniform scaling", "lenet", "static", {"Sener & Koltun 2018": (96.46, 94.99)}),
        ("Kendall et al. (uncertainty)", "lenet", "uncertainty", {"Sener & Koltun 2018": (96.47, 95.29)}),
        ("GradNorm", "lenet", "gradnorm", {"Sener & Koltun 2018": (96.27, 94.84)}),
        ("MGDA-UB", "lenet", "mgda_ub", {"Sener & Koltun 2018": (97.26, 95.90), "Yu et al. 2020": (96.45, 94.95)}),
        ("PCGrad", "lenet", "pcgrad", {"Yu et al. 2020": (96.58, 95.50)}),
    ),
}
