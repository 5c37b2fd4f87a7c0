"""`python -m mtl_core train | submit | compare | export | runs`: the engine and the job runner from a shell."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from mtl_core.checkpoint import save_model
from mtl_core.config import ConfigError, TrainConfig, control, controls, weightings_for
from mtl_core.data import DataUnavailable, load_data
from mtl_core.export import FORMATS as EXPORT_FORMATS
from mtl_core.export import export_file
from mtl_core.jobs.runner import EXECUTORS, JobRunner, RunnerSettings
from mtl_core.metrics import mean_std, mean_std_text
from mtl_core.models import MODELS, shares_parameters
from mtl_core.paper_table import PAPER_EPOCHS, PATIENCE, VAL_SPLIT, differences, table_configs, table_rows
from mtl_core.pareto import front, hypervolume, sweep_configs
from mtl_core.reference import SEED_MODELS, SEED_STUDY
from mtl_core.settings import SettingError
from mtl_core.store.runs import ACTIVE, RunStore
from mtl_core.tasks import OWN_TASK_HELP
from mtl_core.training.loop import CONFLICT_PROBES, Training
from mtl_core.weighting import WEIGHTINGS


def format_record(r: dict) -> str:
    parts = []
    for t, m in r["metrics"].items():
        parts.append(f"{t} {m['acc'] * 100:.2f}%" if "acc" in m else f"{t} MAE {m['mae_digits']:.3f}")
    avg = f" avg {r['avg_acc'] * 100:.2f}%" if r["avg_acc"] is not None else ""
    return f"epoch {r['epoch']:>3}  loss {r['train_loss_total']:.4f}  {'  '.join(parts)}{avg}  ({r['seconds']:.2f} s)"


def _config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The model's recipe, changed where a flag says (every flag of a control in mtl_core/config.py's table)."""
    given = {c: getattr(a, c.field, None) for c in controls() if c.flag}
    return TrainConfig.preset(a.model, **{c.field: c.cast(v) for c, v in given.items() if v is not None})


def add_config_flags(p: argparse.ArgumentParser, fields: tuple[str, ...] | None = None) -> None:
    """A flag for each control that has one (or for those of `fields`, in that order); each defaults to None:
    the recipe's."""
    for c in controls() if fields is None else map(control, fields):
        if not c.flag:
            continue
        if c.field == "tasks":  # the built-in ones, or a student's own (NAME=DIGITS): TrainConfig checks each
            how = {"nargs": "+", "metavar": "TASK", "help": f"{', '.join(c.choices)}, or {OWN_TASK_HELP}"}
        elif c.kind == "bool":
            how = {"action": argparse.BooleanOptionalAction}
        elif c.choices:
            how = {"choices": c.choices}
        else:
            how = {"type": {"int": int, "float": float}[c.kind]}
        how = {"help": c.flag_help, "metavar": c.metavar, **how}
        p.add_argument(c.flag, dest=c.field, default=None, **how)


def run_training(config: TrainConfig, data, out=None, label: str = "", probes: int = 0) -> Training:
    """Train `config`, printing a line per epoch; `probes`: gradient-conflict probes per epoch (0: none)."""
    out = out or sys.stdout
    training = Training(config, data, conflict_probes=probes)
    for r in training.records():
        print(f"{label}{format_record(r)}", file=out, flush=True)
    if training.status != "finished":
        print(f"{label}stopped: {training.reason}", file=out)
    elif training.stopped_early:
        print(f"{label}stopped early: no better score in {config.patience} epochs", file=out)
    return training


def json_record(record: dict, conflict: bool = False, affinity: bool = False) -> dict:
    """An epoch record for `--json`: as stored, plus `weights` (task -> the loss weight used, the epoch's
    mean), and with the probes on, `grad_cosine` ("a|b" -> cosine) and `affinity` (task -> task -> Z)."""
    out = dict(record, weights=record.get("loss_weights") or {})
    probe = record.get("conflict") or {}
    if conflict:
        out["grad_cosine"] = probe.get("cos", {})
    if affinity:
        tasks = list(record["train_loss"])
        pairs = probe.get("affinity", {})
        out["affinity"] = {i: {j: pairs.get(f"{i}|{j}") for j in tasks} for i in tasks} if pairs else {}
    return out


def aggregate(summaries: list[dict]) -> dict:
    """Mean and sample std over seeds of the best average accuracy and of each task's best number."""
    done = [s for s in summaries if s["best_metrics"]]

    def stat(values: list[float]) -> dict:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "n": len(values)}

    tasks = done[0]["best"] if done else {}
    return {
        "best_avg": stat([s["best_avg"] for s in done if s["best_avg"] is not None]),
        "best": {t: stat([s["best"][t] for s in done]) for t in tasks},
        "seeds": [s["seed"] for s in summaries],
    }


def print_aggregate(agg: dict) -> None:
    avg = agg["best_avg"]
    if avg["mean"] is None:
        return
    std = "" if avg["std"] is None else f" ± {avg['std'] * 100:.2f}"
    print(f"over seeds {', '.join(map(str, agg['seeds']))}: best avg {avg['mean'] * 100:.2f}{std}% (mean ± sample std)")


def _seed_path(path: Path, seed: int, many: bool) -> Path:
    return path.with_name(f"{path.stem}-seed{seed}{path.suffix}") if many else path


def cmd_train(a: argparse.Namespace) -> int:
    configs = _config_from_args(a).over_seeds(a.seeds)
    data = load_data(configs[0].data)
    print(f"data: {data.describe()}")
    many = len(configs) > 1
    probes = CONFLICT_PROBES if (a.conflict or a.affinity) else 0
    results, failed = [], False
    for config in configs:
        training = run_training(config, data, label=f"[seed {config.seed}] " if many else "", probes=probes)
        summary = training.summary()
        best = summary["best_avg"]
        best_txt = "-" if best is None else f"{best * 100:.2f}%"
        picked = "" if config.val_split == 0 else f" (picked on {config.val_split:,} validation digits; test once)"
        print(
            f"{config.model} seed {config.seed}: {training.params:,} parameters, {training.train_seconds:.1f} s, "
            f"best epoch {training.best_epoch}{picked}, best avg {best_txt}"
        )
        if a.save:
            path = _seed_path(a.save, config.seed, many)
            save_model(path, training.model, config, {"summary": summary})
            print(f"saved {path}")
        history = [json_record(r, a.conflict, a.affinity) for r in training.history]
        results.append(dict(summary, seed=config.seed, history=history, config=config.to_dict()))
        failed = failed or training.status != "finished"
    agg = aggregate(results)
    if many:
        print_aggregate(agg)
    if a.json:
        payload = dict(results[0]) if not many else {"runs": results, "aggregate": agg}
        write_json(a.json, payload)
        print(f"wrote {a.json}")
    return 1 if failed else 0


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
        configs = config.over_seeds(a.seeds)
        labels = [a.label if len(configs) == 1 else f"{a.label or c.model} · seed {c.seed}" for c in configs]
        run_ids = runner.submit_many(configs, owner="cli", labels=labels)  # all seeds or none
        where = f"the {settings.executor} backend" if runner.has_pool else "the dashboard's pool on this store"
        print(f"queued {', '.join(run_ids)} ({where})", flush=True)
        if not a.wait and not runner.has_pool:
            return 0  # the dashboard's pool trains it; its pages show it
        # Without --wait but with the pool here, this process still waits: nobody else would train the run.
        summaries = [_wait_and_report(runner.store, run_id, len(run_ids) > 1) for run_id in run_ids]
    finally:
        runner.shutdown()
    agg = aggregate(summaries)
    if len(summaries) > 1:
        print_aggregate(agg)
    if a.json:
        payload = summaries[0] if len(summaries) == 1 else {"runs": summaries, "aggregate": agg}
        write_json(a.json, payload)
        print(f"wrote {a.json}")
    return 0 if all(s["status"] == "finished" for s in summaries) else 1


def _wait_and_report(store: RunStore, run_id: str, many: bool = False) -> dict:
    """Print each epoch as it lands in the store; at the end, the same summary as `train --json`."""
    shown = 0
    while True:
        run = store.get_run(run_id)
        label = f"[seed {run['config']['seed']}] " if many else ""
        for record in store.epochs(run_id)[shown:]:
            print(label + format_record(record), flush=True)
            shown += 1
        if run["status"] not in ("queued", "running"):
            break
        time.sleep(0.25)
    if run["status"] != "finished":
        print(f"{label}{run['status']}: {run['reason']}")
    config = run["config"]
    best = run["best"] or {}
    return {
        "run_id": run_id,
        "model": config["model"],
        "tasks": list(config["tasks"]),
        "seed": config["seed"],
        "params": run["params"],
        "status": run["status"],
        "reason": run["reason"] or "",
        "train_seconds": run["train_seconds"],
        "best_epoch": run["best_epoch"],
        "selected_on": "validation" if config.get("val_split") else "test",
        "best": {t: (m["acc"] if "acc" in m else m["mae"]) for t, m in best.items()},
        "best_metrics": best,
        "best_avg": run["best_avg"],
        "device": run["device"],
        "data": run["data_source"],
        "weights": run["weights_path"],
        # The workers always run the probes (mtl_core/training/loop.py): cosines and affinity are in every record.
        "history": [json_record(r, conflict=True, affinity=True) for r in store.epochs(run_id)],
        "config": config,
    }


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


# What the seed study lets a person change: its models and their recipes are the study's.
COMPARE_FIELDS = ("data", "epochs", "seed", "max_batches", "train_limit")


def cmd_compare(a: argparse.Namespace) -> int:
    data = load_data(a.data)
    print(f"data: {data.describe()}")
    overrides = {"max_batches": a.max_batches or 0, "train_limit": a.train_limit or 0}
    rows = seed_table(data, a.epochs, a.seed, **overrides)
    print(format_seed_table(rows, data.describe(), a.epochs))
    if a.json:
        write_json(a.json, rows)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    try:
        out = export_file(a.model_file, a.format, a.out)
    except OSError as exc:  # the model file's own problems arrive as ModelFileError; this is the output's
        raise ValueError(f"cannot write {a.out}: {exc.strerror or exc}") from None
    print(f"wrote {out} ({a.format}, {out.stat().st_size:,} bytes)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def check_output(path: Path) -> None:
    """Refuse, before any work, an output path that cannot be written: ValueError with the reason. Missing
    folders are made when the file is written (write_json, save_model): the nearest existing one must take them."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    why = None
    if path.is_dir():
        why = "it is a folder; give a file name"
    elif not folder.is_dir():
        why = f"{folder} is not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"no permission to write in {folder}"
    elif path.exists() and not os.access(path, os.W_OK):
        why = "the file is read-only"
    if why:
        raise ValueError(f"cannot write {path}: {why}")


def write_json(path: Path, payload) -> None:
    """`payload` as JSON at `path`, its folders made as --save and export make theirs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


OUTPUT_OPTIONS = ("json", "save", "out")  # every option that names a file to write
MAX_SEEDS = 1000


def check_before_work(args: argparse.Namespace) -> None:
    """What can be checked before a command trains or loads anything: the server settings in the
    environment and every output path. ValueError (SettingError included) with a sentence."""
    if args.command in ("train", "submit", "compare", "pareto", "table"):
        RunnerSettings.from_env()
    seeds = getattr(args, "seeds", 1)
    if not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"--seeds must be a whole number from 1 to {MAX_SEEDS} (got {seeds})")
    for option in OUTPUT_OPTIONS:
        if getattr(args, option, None) not in (None, "-"):  # "-": standard output
            check_output(getattr(args, option))
    model_file = getattr(args, "model_file", None)
    if model_file is not None and model_file.is_dir():
        raise ValueError(f"cannot read {model_file}: it is a folder, not a model file")


def cmd_pareto(a: argparse.Namespace) -> int:
    """A sweep of static weights on two tasks (and any methods), queued like `submit`, waited for; then the
    front: each point's weights, test accuracies, run and whether another point beats it on both tasks."""
    base = _config_from_args(a)
    tasks = tuple(base.tasks)
    if len(tasks) != 2:
        raise ConfigError(f"a front is drawn for two tasks: give --tasks A B ({base.model} has {len(tasks)} here)")
    if not shares_parameters(base.model):
        raise ConfigError(
            f"{base.model} shares no parameters, so its tasks cannot trade accuracy: choose a model that shares"
        )
    methods = tuple(a.methods or ())
    unfit = [m for m in methods if m not in weightings_for(base.model)]
    if unfit:
        raise ConfigError(
            f"{', '.join(unfit)} cannot train {base.model}; it can take {', '.join(weightings_for(base.model))}"
        )
    sweep = uuid.uuid4().hex[:6]
    points = sweep_configs(base, tasks, a.points, methods, sweep)
    print(f"front {sweep}: {len(points)} runs ({base.model} on {base.data}, {base.epochs} epochs each)")
    runs = _queue_and_wait(points)
    found = front(runs, tasks)
    hv = hypervolume([(p.accuracy[tasks[0]] / 100, p.accuracy[tasks[1]] / 100) for p in found])
    for p in found:
        what = p.method if p.method != "static" else ", ".join(f"{t} ×{w:g}" for t, w in p.weights.items())
        acc = "  ".join(f"{t} {v:.2f}%" for t, v in p.accuracy.items())
        print(f"{what:<28} {acc}  {'dominated' if p.dominated else 'on the front'}  ({p.run_id})")
    print(f"hypervolume {hv:.4f} (the area of ({tasks[0]} accuracy, {tasks[1]} accuracy) the points dominate)")
    if a.json:
        write_json(a.json, {"sweep": sweep, "tasks": list(tasks), "hypervolume": hv,
                            "points": [dataclasses.asdict(p) for p in found]})  # fmt: skip
        print(f"wrote {a.json}")
    return 0 if len(found) == len(runs) else 1


def _queue_and_wait(points: list[tuple[str, TrainConfig]]) -> list[dict]:
    """Queue every (label, config) through the job runner (as `submit` does) and wait for all, a line for
    each run as it ends. A sweep or a table is longer than one owner's cap on active jobs
    (MTL_MAX_PER_OWNER): the runs wait their turn in the store (RunStore.queue_in_turn), and the runner
    queues them as earlier ones end."""
    runner = JobRunner(RunStore(), RunnerSettings.from_env())
    try:
        turn_id, _ = runner.queue_in_turn(points, owner="cli")
        over: dict[str, dict] = {}
        while True:
            turn = runner.store.turn(turn_id)
            for run_id in turn["runs"]:
                run = runner.store.get_run(run_id)
                if run_id not in over and run["status"] not in ACTIVE:
                    over[run_id] = run
                    if run["best_avg"] is not None:
                        best = f", best avg {100 * run['best_avg']:.2f}% at epoch {run['best_epoch']}"
                    else:
                        best = ""
                    print(f"{run['label']}: {run['status']}{best}", flush=True)
            if not (turn["open"] and turn["waiting"]) and len(over) == len(turn["runs"]):
                return [over[i] for i in turn["runs"]]
            time.sleep(0.25)
    finally:
        runner.shutdown()


def cmd_table(a: argparse.Namespace) -> int:
    """Sener & Koltun's MultiMNIST table: every row over seeds, queued like `submit` and waited for; then
    ours beside the published figures and which differences survive the spread."""
    t0 = time.perf_counter()
    points = table_configs(a.seeds, a.epochs, a.val_split, a.train_limit, a.patience)
    patience = points[0][1].patience  # 0 where it would outlast the run
    early = f", ending once {patience} bring no better validation score" if patience else ""
    print(f"the MultiMNIST table: {len(points)} runs ({a.seeds} seeds, up to {a.epochs} epochs each{early})")
    runs = _queue_and_wait(points)
    rows = table_rows(runs)
    wall = time.perf_counter() - t0
    for row in rows:
        ours = "  ".join(
            f"{t} {'-' if row.mean[t] is None else mean_std_text(row.mean[t], row.std[t])}" for t in ("left", "right")
        )
        pub = "; ".join(f"{k} {x:.2f} / {y:.2f}" for k, (x, y) in row.published.items())
        close = ", ".join(f"{k}: {'close' if row.close_to(k) else 'not close'}" for k in row.published)
        print(f"{row.name:<30} {ours}   published {pub}   ({close})")
    found = differences(rows)
    if found:
        print("Against single task: " + "; ".join(found) + ".")
    print(f"the whole table took {wall / 60:.1f} min")
    if a.json:
        write_json(a.json, {"seeds": a.seeds, "epochs": a.epochs, "wall_s": wall, "differences": found,
                            "rows": [dataclasses.asdict(r) | {"close": {k: r.close_to(k) for k in r.published}}
                                     for r in rows]})  # fmt: skip
        print(f"wrote {a.json}")
    return 0 if all(r["status"] == "finished" for r in runs) else 1


def cmd_runs(a: argparse.Namespace) -> int:
    from mtl_core.listing import cmd_runs as list_runs  # reads the store through the salvage reader, never writes it

    return list_runs(a.json)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m mtl_core", description="Multi-task learning playground engine")
    sub = ap.add_subparsers(dest="command", required=True)

    def train_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", choices=list(MODELS), required=True)
        add_config_flags(p)
        p.add_argument("--json", type=Path, default=None, help="write a JSON summary here")
        p.add_argument("--seeds", type=int, default=1, metavar="N", help="train N times: seeds seed .. seed+N-1")

    t = sub.add_parser("train", help="train one model here, print a line per epoch")
    train_options(t)
    t.add_argument("--conflict", action="store_true", help="probe gradient conflict; --json records get grad_cosine")
    t.add_argument("--affinity", action="store_true", help="probe task affinity; --json records get affinity (T x T)")
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
    add_config_flags(c, COMPARE_FIELDS)
    c.add_argument("--json", type=Path, default=None, help="write a JSON summary here")
    c.set_defaults(func=cmd_compare, epochs=20, seed=0, data="auto")

    e = sub.add_parser("export", help="write a saved model as safetensors, TorchScript or ONNX")
    e.add_argument("model_file", type=Path, metavar="MODEL.safetensors", help="a model this playground saved")
    e.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    e.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write")
    e.set_defaults(func=cmd_export)

    f = sub.add_parser("pareto", help="a sweep of loss weights on two tasks: the Pareto front and its hypervolume")
    f.add_argument("--model", choices=list(MODELS), required=True)
    add_config_flags(f)
    f.add_argument("--points", type=int, default=5, metavar="K", help="static weight pairs from (1, 0) to (0, 1)")
    f.add_argument("--methods", nargs="*", choices=list(WEIGHTINGS), help="loss weighting methods to add as points")
    f.add_argument("--json", type=Path, default=None, help="write the points here")
    f.set_defaults(func=cmd_pareto)

    tb = sub.add_parser(
        "table", help="Sener & Koltun's MultiMNIST table, every row over seeds, beside the published one"
    )
    tb.add_argument("--seeds", type=int, default=3, metavar="N")
    tb.add_argument(
        "--epochs", type=int, default=PAPER_EPOCHS, help=f"the paper's {PAPER_EPOCHS}, or fewer (a lesson: 20)"
    )
    tb.add_argument("--val-split", type=int, default=VAL_SPLIT, metavar="N", help="training images that pick the epoch")
    tb.add_argument(
        "--train-limit", type=int, default=0, metavar="N", help="only the first N training images (a dry run)"
    )
    tb.add_argument(
        "--patience",
        type=int,
        default=PATIENCE,
        metavar="N",
        help=f"end a run once its validation score has not improved for N epochs (default {PATIENCE}; 0: never)",
    )
    tb.add_argument("--json", type=Path, default=None, help="write the table here")
    tb.set_defaults(func=cmd_table)

    r = sub.add_parser("runs", help="list the run store's runs (a damaged store: every run still readable)")
    r.add_argument("--json", default=None, metavar="FILE", help="write them as JSON here ('-': standard output)")
    r.set_defaults(func=cmd_runs)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        check_before_work(args)
        return args.func(args)
    except (ConfigError, DataUnavailable, SettingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that fills up or goes away mid-way: still a sentence
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
