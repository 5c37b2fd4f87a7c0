"""`python -m mtl_core train | submit | compare | bench | export`: the engine and the job runner from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from .checkpoint import save_model
from .config import DEVICES, OPTIMIZERS, PRECISIONS, ConfigError, TrainConfig
from .data import SOURCES, DataUnavailable, load_data
from .export import FORMATS as EXPORT_FORMATS
from .export import export_file
from .jobs import EXECUTORS, JobRunner, RunnerSettings
from .models import ALPHA_INITS, MODELS
from .reference import SEED_MODELS, SEED_STUDY
from .runs import RunStore
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


def cmd_submit(a: argparse.Namespace) -> int:
    """Queue through the same runner the dashboard uses. Where a dashboard already serves this store,
    its pool trains the run (this process only queues and watches); else this process trains it."""
    config = _config_from_args(a)
    settings = RunnerSettings.from_env()
    settings = replace(
        settings,
        executor=a.executor or settings.executor,
        ray_address=settings.ray_address if a.ray_address is None else a.ray_address,
    )
    runner = JobRunner(RunStore(), settings)
    try:
        run_id = runner.submit(config, owner="cli", label=a.label)
        where = f"the {settings.executor} backend" if runner.has_pool else "the dashboard's pool on this store"
        print(f"queued {run_id} ({where})", flush=True)
        if not a.wait and not runner.has_pool:
            return 0  # the dashboard's pool trains it; its pages show it
        # Without --wait but with the pool here, this process still waits: nobody else would train the run.
        return _wait_and_report(runner.store, run_id, a.json)
    finally:
        runner.shutdown()


def _wait_and_report(store: RunStore, run_id: str, json_path: Path | None) -> int:
    """Print each epoch as it lands in the store; at the end, the same summary as `train --json`."""
    shown = 0
    while True:
        run = store.get_run(run_id)
        for record in store.epochs(run_id)[shown:]:
            print(format_record(record), flush=True)
            shown += 1
        if run["status"] not in ("queued", "running"):
            break
        time.sleep(0.25)
    if run["status"] != "finished":
        print(f"{run['status']}: {run['reason']}")
    if json_path:
        config = run["config"]
        summary = {
            "run_id": run_id,
            "model": config["model"],
            "tasks": list(config["tasks"]),
            "params": run["params"],
            "status": run["status"],
            "reason": run["reason"] or "",
            "train_seconds": run["train_seconds"],
            "best_epoch": run["best_epoch"],
            "best": {t: (m["acc"] if "acc" in m else m["mae"]) for t, m in run["best"].items()},
            "best_metrics": run["best"],
            "best_avg": run["best_avg"],
            "device": run["device"],
            "data": run["data_source"],
            "weights": run["weights_path"],
            "history": store.epochs(run_id),
            "config": config,
        }
        Path(json_path).write_text(json.dumps(summary, indent=2))
        print(f"wrote {json_path}")
    return 0 if run["status"] == "finished" else 1


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


def cmd_export(a: argparse.Namespace) -> int:
    try:
        out = export_file(a.model_file, a.format, a.out)
    except OSError as exc:  # the model file's own problems arrive as ModelFileError; this is the output's
        raise ValueError(f"cannot write {a.out}: {exc.strerror or exc}") from None
    print(f"wrote {out} ({a.format}, {out.stat().st_size:,} bytes)")
    return 0


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

    def train_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", choices=list(MODELS), required=True)
        p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
        common(p)
        p.add_argument("--lr", type=float, default=None)
        p.add_argument("--batch-size", type=int, default=None)
        p.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
        p.add_argument("--device", choices=DEVICES, default=None)
        p.add_argument("--precision", choices=PRECISIONS, default=None)
        p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument("--alpha-init", choices=list(ALPHA_INITS), default=None)
        p.add_argument("--alpha-lr-mult", type=float, default=None)

    t = sub.add_parser("train", help="train one model here, print a line per epoch")
    train_options(t)
    t.add_argument("--save", type=Path, default=None, help="write the best model here (.safetensors)")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("submit", help="queue a run through the job runner (local worker pool or Ray)")
    train_options(q)
    q.add_argument("--executor", choices=EXECUTORS, default=None, help="default: MTL_EXECUTOR, else local")
    q.add_argument("--ray-address", default=None, help="default: MTL_RAY_ADDRESS, else a local Ray instance")
    q.add_argument("--wait", action="store_true", help="wait for the run to end, print its epochs")
    q.add_argument("--label", default="", help="a name for the run in the dashboard")
    q.set_defaults(func=cmd_submit)

    c = sub.add_parser("compare", help="the seed study: STL, hard sharing, cross-stitch side by side")
    common(c)
    c.set_defaults(func=cmd_compare, epochs=20, seed=0, data="auto")

    b = sub.add_parser("bench", help="seconds per epoch: seed-faithful pipeline vs ours", add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="write a saved model as safetensors, TorchScript or ONNX")
    e.add_argument("model_file", type=Path, metavar="MODEL.safetensors", help="a model this playground saved")
    e.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    e.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write")
    e.set_defaults(func=cmd_export)
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
