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
