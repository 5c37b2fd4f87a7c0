"""How far the first guess of a run's length is from the run: the Train page says "roughly N s" before
anything comparable has run on the server (mtl_core/jobs/estimate.py). Issue 24 asks for every model and
loss weighting within 2x.

`python benchmarks/estimates.py [--models stl,hard,...] [--threads 1]`: for each model and each loss
weighting it can take, one epoch as a worker trains it (Training with the worker's defaults, one torch
thread, its recipe's batch size) on full MNIST (MultiMNIST built from it for the LeNets) from
$MTL_DATA_DIR when it is there, else the embedded subset, against
the guess an empty store gives for the same config. Prints measured / guess per pair and how many are
within 2x either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import torch  # noqa: E402

from mtl_core.config import TrainConfig, weightings_for  # noqa: E402
from mtl_core.data import load_data  # noqa: E402
from mtl_core.jobs.estimate import epoch_estimate  # noqa: E402
from mtl_core.models import MODELS  # noqa: E402
from mtl_core.store.runs import RunStore  # noqa: E402
from mtl_core.training.loop import Training  # noqa: E402
from mtl_core.weighting import WEIGHTINGS  # noqa: E402


def pairs(models: list[str], weightings: list[str]) -> list[tuple[str, str]]:
    return [(m, w) for m in models for w in weightings_for(m) if w in weightings]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/estimates.py", description=__doc__)
    ap.add_argument("--models", default="stl,hard,cross_stitch,mmoe", help="comma-separated (CNN epochs take minutes)")
    ap.add_argument("--weightings", default=",".join(WEIGHTINGS), help="comma-separated; default: all")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, as a worker of a busy server has")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N digits only (the CNNs' long epochs)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sources: dict[str, object] = {}  # the data each recipe trains on (MultiMNIST for the LeNets), loaded once
    store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")  # empty: every estimate is the first guess
    within = 0
    rows = pairs([m for m in a.models.split(",") if m in MODELS], a.weightings.split(","))
    print(f"{'model':<18}{'weighting':<13}{'guess s':>9}{'measured s':>12}{'measured/guess':>16}")
    for model, weighting in rows:
        config = TrainConfig.preset(model, epochs=1, loss_weighting=weighting, train_limit=a.limit)
        if config.data not in sources:
            sources[config.data] = data = load_data(config.data, download=False)
            print(f"data: {data.describe(detail=False)}; {a.threads} thread(s)")
        data = sources[config.data]
        guess = epoch_estimate(store, config.to_dict(), data.source, data.n_train).seconds
        (record,) = list(Training(config, data).records())
        ratio = record["seconds"] / guess
        within += 0.5 <= ratio <= 2.0
        print(f"{model:<18}{weighting:<13}{guess:>9.2f}{record['seconds']:>12.2f}{ratio:>16.2f}")
    print(f"within 2x: {within} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
