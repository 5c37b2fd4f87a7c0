"""Benchmark: seconds per epoch of a seed-faithful pipeline vs ours, measured side by side in one run.

Seed-faithful = what the reference studies do: a per-sample `Dataset` (PIL image -> ToTensor ->
Normalize), a `DataLoader` with batch 128 and shuffling, plain (unfused) Adam, and the plain
per-column modules (two separate STL networks, each with its own pass over the data). Ours = the
tensor-resident `Training` loop. Seed-faithful epochs are extrapolated from `--seed-batches`
batches (printed as such) unless `--full` is given; ours are always whole epochs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from .config import TrainConfig
from .data import MEAN, STD, MTLData, load_data
from .metrics import task_loss
from .models import HardSharingMLP, MultiTaskCNN, PlainCrossStitch, PlainSTL, build_model
from .predict import predict
from .reference import SEED_MODELS
from .tasks import make_targets
from .train import Training


class SeedFaithfulMNIST(torch.utils.data.Dataset):
    """Per-sample Python, like torchvision's MNIST with transforms (the reference pipelines)."""

    def __init__(self, images_u8: np.ndarray, digits: np.ndarray, tasks: tuple[str, ...]):
        from torchvision import transforms

        self.images, self.tasks = images_u8, tasks
        self.targets = {t: v.numpy() for t, v in make_targets(torch.from_numpy(digits), tasks).items()}
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.transform(Image.fromarray(self.images[i], mode="L"))
        return img, {t: torch.as_tensor(v[i]) for t, v in self.targets.items()}


def _u8(data: MTLData) -> tuple[np.ndarray, np.ndarray]:
    images = ((data.train_x.squeeze(1) * STD + MEAN) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return images, data.train_y.numpy()


def seed_faithful_seconds(model_name: str, data: MTLData, max_batches: int | None) -> tuple[float, int]:
    """Seconds for one seed-faithful epoch (extrapolated when max_batches cuts it) and batches timed."""
    tasks = TrainConfig.preset(model_name).tasks
    images, digits = _u8(data)
    torch.manual_seed(0)
    if model_name == "stl":
        nets = [PlainSTL((t,)) for t in tasks]  # two separate models, trained one after the other
    elif model_name == "hard":
        nets = [HardSharingMLP(tasks)]
    elif model_name == "cross_stitch":
        nets = [PlainCrossStitch(tasks)]
    else:
        nets = [MultiTaskCNN(tasks)]
    total, timed = 0.0, 0
    n_batches = (len(images) + 127) // 128
    for net in nets:
        loader = torch.utils.data.DataLoader(
            SeedFaithfulMNIST(images, digits, net.tasks), batch_size=128, shuffle=True, num_workers=0
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            out = net(x)
            loss = sum(task_loss(t, out[t], y[t]) for t in net.tasks)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += 1
            if max_batches and seen >= max_batches:
                break
        total += (time.perf_counter() - t0) * n_batches / seen
        timed += seen
    return total, timed


def ours_seconds(model_name: str, data: MTLData, epochs: int = 1, **overrides) -> tuple[float, Training]:
    """Mean seconds per training epoch (evaluation excluded, as in the seed-faithful timing)."""
    training = Training(TrainConfig.preset(model_name, epochs=epochs, **overrides), data)
    records = list(training.records())
    return statistics.mean(r["train_only_seconds"] for r in records), training


def prediction_ms(model_name: str, repeats: int = 200) -> float:
    model = build_model(model_name).eval()
    image = np.random.default_rng(0).standard_normal((1, 28, 28)).astype(np.float32)
    predict(model, image)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(model, image)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtl_core bench", description=__doc__)
    ap.add_argument("--data", default="auto")
    ap.add_argument("--seed-batches", type=int, default=150, help="seed-faithful batches timed per model")
    ap.add_argument("--full", action="store_true", help="time whole seed-faithful epochs")
    ap.add_argument("--no-table", action="store_true", help="skip the 20-epoch seed table")
    ap.add_argument("--no-cnn", action="store_true")
    a = ap.parse_args(argv)
    data = load_data(a.data)
    limit = None if a.full else a.seed_batches
    print(f"data: {data.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<22}{'seed-faithful s/epoch':>24}{'ours s/epoch':>14}{'speed-up':>10}")
    models = [m for m in SEED_MODELS] + ([] if a.no_cnn else ["cnn"])
    for m in models:
        seed_s, timed = seed_faithful_seconds(m, data, limit)
        note = "" if a.full else f" (from {timed} batches)"
        variants = (
            # fp32 beside "auto" (bf16 first layer where native): the seed pipeline is fp32.
            [(" fp32", {"precision": "fp32"}), (" auto", {})]
            if m != "cnn"
            else [
                (" fp32", {"precision": "fp32", "channels_last": False}),
                (" fp32+channels_last", {"precision": "fp32", "channels_last": True}),
                (" bf16+channels_last", {"precision": "bf16", "channels_last": True}),
            ]
        )
        for suffix, over in variants:
            ours, training = ours_seconds(m, data, **over)
            acc = training.history[-1]["avg_acc"]
            print(
                f"{m + suffix:<22}{seed_s:>24.2f}{ours:>14.2f}{seed_s / ours:>9.1f}x   avg acc after 1 epoch "
                f"{acc * 100:.2f}% ({training.precision}, {training.path} path){note}",
                flush=True,
            )
    if not a.no_table:
        total = 0.0
        for m in SEED_MODELS:
            training = Training(TrainConfig.preset(m, epochs=20), data)
            for _ in training.records():
                pass
            total += training.train_seconds
            print(
                f"seed table: {m} 20 epochs {training.train_seconds:.1f} s (incl. per-epoch test), "
                f"best avg {training.summary()['best_avg'] * 100:.2f}% ({training.precision}, {training.path} path)",
                flush=True,
            )
        print(f"seed table total: {total:.1f} s of training for STL pair + hard + cross-stitch (target <= 30 s)")
    for m in ["stl", "hard", "cross_stitch", "cnn"]:
        print(f"single-image prediction {m:<13} {prediction_ms(m):.2f} ms (median of 200)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
