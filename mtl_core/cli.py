"""`python -m mtl_core train | compare | bench`: the engine from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import save_model
from .config import DEVICES, OPTIMIZERS, PRECISIONS, ConfigError, TrainConfig
from .data import SOURCES, DataUnavailable, load_data
from .models import ALPHA_INITS, MODELS
from .reference import SEED_MODELS, SEED_STUDY
from .tasks import TASKS
from .train import Training


def format_record(r: dict) -> str:
    parts = []
    for t, m in r["metrics"].items():
        parts.append(f"{t} {m['acc'] * 100:.2f}%" if "acc" in m else f"{t} MAE {m['mae_digits']:.3f}")
    avg = f" avg {r['avg_acc'] * 100:.2f}%" if r["avg_acc"] is not None else ""
    return f"epoch {r['epoch']:>3}  loss {r['train_loss_total']:.4f}  {'  '.join(parts)}{avg}  ({r['seconds']:.2f} s)"


def _config_from_args(a: argparse.Namespace, model: str | None = None) -> TrainConfig:
    overrides = {
        k: v
        for k, v in {
            "tasks": tuple(a.tasks) if a.tasks else None,
            "epochs": a.epochs,
            "lr": a.lr,
            "batch_size": a.batch_size,
            "seed": a.seed,
            "device": a.device,
            "data": a.data,
            "precision": a.precision,
            "channels_last": a.channels_last,
            "alpha_init": a.alpha_init,
            "alpha_lr_mult": a.alpha_lr_mult,
            "train_limit": a.train_limit,
            "max_batches": a.max_batches,
            "optimizer": a.optimizer,
        }.items()
        if v is not None
    }
    return TrainConfig.preset(model or a.model, **overrides)


def run_training(config: TrainConfig, data, out=None, label: str = "") -> Training:
    out = out or sys.stdout
    training = Training(config, data)
    for r in training.records():
        print(f"{label}{format_record(r)}", file=out, flush=True)
    if training.status != "finished":
        print(f"{label}stopped: {training.reason}", file=out)
    return training


def cmd_train(a: argparse.Namespace) -> int:
    config = _config_from_args(a)
    data = load_data(config.data)
    print(f"data: {data.describe()}")
    training = run_training(config, data)
    best = training.summary()["best_avg"]
    best_txt = "-" if best is None else f"{best * 100:.2f}%"
    print(
        f"{config.model}: {training.params:,} parameters, {training.train_seconds:.1f} s, "
        f"best epoch {training.best_epoch}, best avg {best_txt}"
    )
    if a.save:
        save_model(a.save, training.model, config, {"summary": training.summary()})
        print(f"saved {a.save}")
    if a.json:
        summary = dict(training.summary(), history=training.history, config=config.to_dict())
        Path(a.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {a.json}")
    return 0 if training.status == "finished" else 1


def seed_table(data, epochs: int, seed: int, out=None, **overrides) -> list[dict]:
    rows = []
    for model in SEED_MODELS:
        config = TrainConfig.preset(model, epochs=epochs, seed=seed, **overrides)
        training = run_training(config, data, out=out, label=f"[{model}] ")
        rows.append(training.summary())
    return rows


def format_seed_table(rows: list[dict], data_desc: str, epochs: int) -> str:
    ref = SEED_STUDY["rows"]
    lines = [
        f"Seed study on {data_desc}, {epochs} epochs (reference: {SEED_STUDY['source']})",
        f"{'model':<14}{'params':>10}{'ref params':>12}{'time (s)':>10}{'ref time':>10}{'best avg':>10}{'ref avg':>9}",
    ]
    for r in rows:
        f = ref[r["model"]]
        avg = "-" if r["best_avg"] is None else f"{r['best_avg'] * 100:.2f}%"
        lines.append(
            f"{r['model']:<14}{r['params']:>10,}{f['params']:>12,}{r['train_seconds']:>10.1f}"
            f"{f['train_seconds']:>10.1f}{avg:>10}{f['best_avg'] * 100:>8.2f}%"
        )
    return "\n".join(lines)


def cmd_compare(a: argparse.Namespace) -> int:
    data = load_data(a.data)
    print(f"data: {data.describe()}")
    overrides = {"max_batches": a.max_batches or 0, "train_limit": a.train_limit or 0}
    rows = seed_table(data, a.epochs, a.seed, **overrides)
    print(format_seed_table(rows, data.describe(), a.epochs))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(a.bench_args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mtl_core", description="Multi-task learning playground engine")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", choices=SOURCES, default=None)
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--max-batches", type=int, default=None, help="batches per epoch (a dry run)")
        p.add_argument("--train-limit", type=int, default=None, help="use only the first N training digits")
        p.add_argument("--json", type=Path, default=None, help="write a JSON summary here")

    t = sub.add_parser("train", help="train one model, print a line per epoch")
    t.add_argument("--model", choices=list(MODELS), required=True)
    t.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    common(t)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    t.add_argument("--device", choices=DEVICES, default=None)
    t.add_argument("--precision", choices=PRECISIONS, default=None)
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--alpha-init", choices=list(ALPHA_INITS), default=None)
    t.add_argument("--alpha-lr-mult", type=float, default=None)
    t.add_argument("--save", type=Path, default=None, help="write the best model here (.safetensors)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("compare", help="the seed study: STL, hard sharing, cross-stitch side by side")
    common(c)
    c.set_defaults(func=cmd_compare, epochs=20, seed=0, data="auto")

    b = sub.add_parser("bench", help="seconds per epoch: seed-faithful pipeline vs ours", add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own options, also ones argparse's REMAINDER would refuse first
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
