"""The CUDA path, on a machine with an NVIDIA GPU: `python benchmarks/gpu_check.py [--seeds 3]`.

CI has no GPU, so this is the check to run where one is lent. It trains every model kind on CUDA for a
few epochs (with the dashboard's gradient-conflict probes) and prints each one's precision, path, time
per epoch and best average accuracy; then times a step of the CNN and of hard sharing on CUDA and on the
CPU, side by side in this process; then the CNN's whole 10-epoch tutorial recipe on CUDA for `--seeds`
seeds (digit accuracy after the last epoch and at the best one, best average). Full MNIST when
$MTL_DATA_DIR holds it, else the embedded subset (then the accuracies are not the reference's).
Without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mtl_core.config import MODELS, TrainConfig  # noqa: E402
from mtl_core.data import load_data  # noqa: E402
from mtl_core.training.loop import Training  # noqa: E402


def every_model(data, epochs_mlp: int = 3, epochs_cnn: int = 2) -> None:
    for name, spec in MODELS.items():
        epochs = epochs_cnn if spec.family == "cnn" else epochs_mlp
        training = Training(TrainConfig.preset(name, device="cuda", epochs=epochs), data, conflict_probes=4)
        records = list(training.records())
        s = training.summary()
        per_epoch = statistics.mean(r["train_only_seconds"] for r in records)
        print(
            f"{name:17s} {s['device']} {s['precision']:4s} {s['path']:8s} {training.status}: "
            f"{per_epoch:.2f} s/epoch of training, best avg {training.best_record['avg_acc'] * 100:.2f}%",
            flush=True,
        )


def step_ms(name: str, device: str, data, batches: int = 150) -> float:
    """ms per training step in the second of two short epochs (the first warms up)."""
    cfg = TrainConfig.preset(name, device=device, epochs=2, max_batches=batches)
    records = list(Training(cfg, data, conflict_probes=0).records())
    return records[-1]["train_only_seconds"] / batches * 1e3


def cnn_recipe(data, seeds: int) -> None:
    for seed in range(seeds):
        training = Training(TrainConfig.preset("cnn", device="cuda", seed=seed), data, conflict_probes=0)
        t0 = time.perf_counter()
        for _ in training.records():
            pass
        last, best = training.history[-1], training.best_record
        print(
            f"cnn recipe seed {seed} ({training.precision}): digit after epoch {last['epoch']} "
            f"{last['metrics']['digit']['acc'] * 100:.2f}%, at the best epoch ({best['epoch']}) "
            f"{best['metrics']['digit']['acc'] * 100:.2f}%, best avg {best['avg_acc'] * 100:.2f}%, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the CNN's 10-epoch recipe (0: skip it)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; nothing to check here")
        return 0
    data = load_data("auto")
    print(f"{data.describe()}; torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    every_model(data)
    for name in ("cnn", "hard"):
        gpu, cpu = step_ms(name, "cuda", data), step_ms(name, "cpu", data)
        print(f"{name} step: CUDA {gpu:.2f} ms, CPU ({torch.get_num_threads()} threads) {cpu:.2f} ms", flush=True)
    cnn_recipe(data, a.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
