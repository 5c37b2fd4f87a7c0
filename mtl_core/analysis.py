"""Numbers for comparing runs: the comparison table, Δm against single-task runs, curves as rows,
and per-test-digit predictions of a saved model (confusion matrices, the value scatter, the grid)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtl_core.config import TrainConfig
from mtl_core.data import SOURCES, MTLData
from mtl_core.metrics import mean_by_key, mean_std, mean_std_text
from mtl_core.models import MODELS, MultiTaskModel
from mtl_core.predict import predict
from mtl_core.reference import SEED_MODELS, SEED_STUDY
from mtl_core.tasks import TASKS, VALUE_SCALE, get_task, is_task, make_targets
from mtl_core.text import clean_name, label_text


def headline(metrics: dict[str, float]) -> float:
    """One number per task: accuracy, or MAE for regression."""
    return metrics["acc"] if "acc" in metrics else metrics["mae"]


def delta_m(metrics: dict[str, dict], baseline: dict[str, dict]) -> float | None:
    """Mean relative change over tasks vs a single-task baseline, in % (Maninis et al., 2019):
    higher is better; for MAE, a lower value counts as a gain."""
    terms = []
    for task, m in metrics.items():
        if task not in baseline:
            return None
        ours, base = headline(m), headline(baseline[task])
        if base == 0:
            return None
        sign = -1.0 if "acc" not in m else 1.0
        terms.append(sign * (ours - base) / base)
    return 100.0 * sum(terms) / len(terms) if terms else None


def data_source(run: dict) -> str:
    """The source a run really trained on ("auto" resolved by its worker), else the one it asked for."""
    resolved = run.get("data_source")
    return resolved if resolved in SOURCES else run["config"]["data"]


def _baseline_model(run: dict) -> str:
    """The single-task model of the run's family: STL MLPs for the MLPs, one CNN per task for the CNNs."""
    spec = MODELS.get(run["model"])
    return spec.baseline if spec else "stl"


# A fair single-task baseline saw the same digits for as long: same data, seed and training budget.
BUDGET_FIELDS = ("epochs", "train_limit", "max_batches", "val_split")


def _budget(run: dict) -> tuple:
    c = run["config"]
    return (data_source(run), c.get("seed", 0), *(c.get(f, 20 if f == "epochs" else 0) for f in BUDGET_FIELDS))


def _budget_words(run: dict, seed: bool = True) -> str:
    c = run["config"]
    words = [f"seed {c.get('seed', 0)}"] if seed else []
    words += [f"{c.get('epochs', 20)} epochs", data_source(run)]
    if c.get("train_limit"):
        words.append(f"first {c['train_limit']:,} digits")
    if c.get("max_batches"):
        words.append(f"{c['max_batches']} batches an epoch")
    if c.get("val_split"):
        words.append(f"{c['val_split']:,} validation digits")
    return ", ".join(words)


def _could_be_baseline(candidate: dict, run: dict) -> bool:
    """`candidate` is the single-task model of `run`'s family on the same tasks, data, seed and budget."""
    return (
        candidate["model"] == _baseline_model(run)
        and set(candidate["config"]["tasks"]) == set(run["config"]["tasks"])
        and _budget(candidate) == _budget(run)
    )


def _stl_baseline(run: dict, runs: list[dict]) -> dict | None:
    """The newest finished single-task run of the same family with the same tasks, data, seed and budget."""
    for r in runs:
        if r["status"] == "finished" and r["best"] and _could_be_baseline(r, run):
            return r
    return None


def _baseline_title(run: dict) -> str:
    return "STL" if _baseline_model(run) == "stl" else "single-task CNN"


def delta_m_missing(run: dict, pool: list[dict]) -> str:
    """Why a run has no Δm in the comparison table ("" when it has one)."""
    if run["model"] == _baseline_model(run):
        return f"{_baseline_title(run)} is the baseline Δm is measured against"
    if not run["best"]:
        return "no finished epoch yet"
    if _stl_baseline(run, sorted(pool, key=lambda r: r["created"], reverse=True)) is None:
        tasks = "+".join(run["config"]["tasks"])
        return (
            f"no finished {_baseline_title(run)} run on {tasks} with the same {_budget_words(run)} "
            "to compare with (train one)"
        )
    return ""


def baseline_config(run: dict) -> dict:
    """The config (as a dict) of the single-task run that would give `run` its Δm: the family's
    single-task model at its reference recipe, on the same tasks, data, seed and budget."""
    c = run["config"]
    same = {f: c[f] for f in ("tasks", "data", "seed", *BUDGET_FIELDS) if f in c}
    same["tasks"] = tuple(same["tasks"])
    same["data"] = data_source(run)
    return TrainConfig.preset(_baseline_model(run), **same).to_dict()


def run_label(run: dict) -> str:
    """Run name (or model), tasks, the id's tail; the student's display name first when they gave one.
    Plain text; a label with a colon is quoted, so it cannot pass for that name (mtl_core/text.py)."""
    name = label_text(run.get("label")) or run["model"]
    student = clean_name(run.get("student"))
    student = f"{student}: " if student else ""
    return f"{student}{name} · {'+'.join(run['config']['tasks'])} · {run['id'][-6:]}"


def student_cell(runs: list[dict]) -> str:
    """Who trained these runs, for a table that holds more than one student's runs."""
    return students_text(runs) or "(no name given)"


def compare_rows(
    runs: list[dict], pool: list[dict] | None = None, rounded: bool = True, students: bool = False
) -> list[dict]:
    """One flat row per run for the comparison table; `pool` is where STL baselines are looked up.
    `rounded=False` keeps every digit (the CSV and JSON downloads); `students` adds a column naming each
    run's student (the teacher's view and the class gallery)."""
    round_ = round if rounded else (lambda v, _digits: v)
    pool = sorted(pool if pool is not None else runs, key=lambda r: r["created"], reverse=True)
    rows = []
    for r in runs:
        # The columns people compare first come first (the table is wider than a laptop screen).
        base = _stl_baseline(r, pool)
        dm = delta_m(r["best"], base["best"]) if (base and r["best"] and r["model"] != _baseline_model(r)) else None
        row = {
            **({"student": student_cell([r])} if students else {}),
            "run": run_label(r),
            "best avg acc %": None if r["best_avg"] is None else round_(100 * r["best_avg"], 2),
            "Δm vs STL %": None if dm is None else round_(dm, 2),
            "params": r["params"],
            "train_s": None if r["train_seconds"] is None else round_(r["train_seconds"], 2),
        }
        for task, m in (r["best"] or {}).items():
            if "acc" in m:
                row[f"{task} acc %"] = None if m["acc"] is None else round_(100 * m["acc"], 2)
            else:
                row[f"{task} MAE (digits)"] = None if m["mae"] is None else round_(m["mae"] * VALUE_SCALE, 3)
        row.update(
            model=r["model"],
            status=r["status"],
            data=data_source(r),
            epochs=r["config"]["epochs"],
            best_epoch=r["best_epoch"],
            **{"best epoch picked on": picked_on(r)},
        )
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- runs over several seeds


def group_key(run: dict, across_owners: bool = False) -> str:
    """Runs with the same key differ only in their seed: one configuration, trained N times. One owner's
    runs only, unless `across_owners` (the teacher chose to pool the class): otherwise four students who
    each trained seed 0 would read as one student with four seeds."""
    config = {k: v for k, v in run["config"].items() if k != "seed"}
    config["data"] = data_source(run)
    config["tasks"] = sorted(config["tasks"])
    if not across_owners:
        config["_owner"] = run.get("owner", "")
    return json.dumps(config, sort_keys=True, default=str)


def _seed(run: dict) -> int:
    return run["config"].get("seed", 0)


def _counts_first(run: dict) -> tuple[bool, float]:
    """Of the runs that repeat one seed, the newest finished one counts (the newest run when none has
    finished): a rerun replaces its seed's number instead of adding a second copy of it."""
    return (run["status"] == "finished" and bool(run["best"]), run["created"])


@dataclass(frozen=True)
class SeedGroups:
    """`groups`: per configuration, one run per seed, by seed; what mean ± std is over. `duplicates`: each
    run that repeats a seed already in its group, by id, with the run counted for that seed. A repeated
    seed is the same experiment again (same data order, same initial weights), not another sample: two
    copies would give a spread of 0.00 that says nothing about seeds."""

    groups: list[list[dict]]
    duplicates: dict[str, tuple[dict, dict]]

    def duplicates_of(self, group: list[dict]) -> list[tuple[dict, dict]]:
        """(duplicate, the run counted for its seed) for the runs of `group`."""
        ids = {r["id"] for r in group}
        return [(d, kept) for d, kept in self.duplicates.values() if kept["id"] in ids]


def sort_seeds(runs: list[dict], across_owners: bool = False) -> SeedGroups:
    """`runs` grouped by configuration (seed aside) and owner (unless `across_owners`), in the order each
    group first appears; within a group one run per seed (see `_counts_first`), the others duplicates."""
    by_key: dict[str, dict[int, list[dict]]] = {}
    for r in runs:
        by_key.setdefault(group_key(r, across_owners), {}).setdefault(_seed(r), []).append(r)
    groups, duplicates = [], {}
    for seeds in by_key.values():
        group = []
        for seed in sorted(seeds):
            kept, *others = sorted(seeds[seed], key=_counts_first, reverse=True)
            group.append(kept)
            duplicates.update({d["id"]: (d, kept) for d in others})
        groups.append(group)
    return SeedGroups(groups, duplicates)


def seed_groups(runs: list[dict], across_owners: bool = False) -> list[list[dict]]:
    """The counted runs of `sort_seeds`: per configuration, one run per seed."""
    return sort_seeds(runs, across_owners).groups


def seeds_text(group: list[dict]) -> str:
    return ", ".join(str(_seed(r)) for r in group)


def duplicates_text(duplicates: list[tuple[dict, dict]]) -> str:
    """ "run 3f2a1b duplicate of seed 0 (run 9c8d7e counts)", one per duplicate, with each student's name
    where the two runs are different students' (a group pooled across the class); "" for none."""

    def name(r: dict, other: dict) -> str:
        if r.get("owner") == other.get("owner"):
            return f"run {r['id'][-6:]}"
        return f"run {r['id'][-6:]} ({clean_name(r.get('student')) or 'no name given'})"

    return "; ".join(
        f"{name(d, kept)} duplicate of seed {_seed(kept)} ({name(kept, d)} counts)" for d, kept in duplicates
    )


def base_label(run: dict) -> str:
    """The run's name without the " · seed N" the Train page adds to each run of a multi-seed start."""
    return re.sub(r" · seed \d+$", "", run.get("label") or "") or run["model"]


def students_text(runs: list[dict]) -> str:
    """The display names of the runs' students, each once, and how many gave none; "" for one student
    without a name; a count past three students."""
    names = {r.get("owner", ""): clean_name(r.get("student")) for r in runs}
    if len(names) > 3:
        return f"{len(names)} students"
    named = list(dict.fromkeys(n for n in names.values() if n))
    nameless = sum(1 for n in names.values() if not n)
    if nameless and len(names) > 1:
        named.append(f"{nameless} without a name")
    return ", ".join(named)


def group_label(group: list[dict]) -> str:
    """Like `run_label`: the student's name first (every student's, for a group pooled across the class),
    then the name without its seed, the tasks and the seeds."""
    r = group[0]
    name = label_text(base_label(r))
    student = students_text(group)
    student = f"{student}: " if student else ""
    n = len(group)
    seeds = f"seed {seeds_text(group)}" if n == 1 else f"{n} seeds ({seeds_text(group)})"
    return f"{student}{name} · {'+'.join(r['config']['tasks'])} · {seeds}"


def _finished(group: list[dict]) -> list[dict]:
    """The runs of a group that count in its mean ± std: finished, with a best epoch."""
    return [r for r in group if r["status"] == "finished" and r["best"]]


def group_delta_m(group: list[dict], pool: list[dict]) -> tuple[list[float], str]:
    """Δm of each finished run of the group against the single-task run with its own seed and budget
    (paired by seed), and why there is none ("" when every finished run has its baseline)."""
    finished = _finished(group)
    if not finished:
        return [], "no finished run yet"
    if finished[0]["model"] == _baseline_model(finished[0]):
        return [], f"{_baseline_title(finished[0])} is the baseline Δm is measured against"
    pool = sorted(pool, key=lambda r: r["created"], reverse=True)
    values, missing = [], []
    for r in finished:
        base = _stl_baseline(r, pool)
        dm = delta_m(r["best"], base["best"]) if base else None
        if dm is None:
            missing.append(str(r["config"].get("seed", 0)))
        else:
            values.append(dm)
    if missing:
        r = finished[0]
        why = (
            f"no finished {_baseline_title(r)} run on {'+'.join(r['config']['tasks'])} with seed "
            f"{', '.join(missing)} and the same {_budget_words(r, seed=False)} (train them)"
        )
        return [], why
    return values, ""


def missing_baselines(runs: list[dict], pool: list[dict]) -> list[dict]:
    """Configs of the single-task runs that would give `runs` their Δm: each once, and none that is
    already queued or training."""
    pool = sorted(pool, key=lambda r: r["created"], reverse=True)
    pending = [r for r in pool if r["status"] in ("queued", "running")]
    out: list[dict] = []
    for r in runs:
        if r["model"] == _baseline_model(r) or not r["best"] or _stl_baseline(r, pool):
            continue
        config = baseline_config(r)
        if not any(_could_be_baseline(p, r) for p in pending) and config not in out:
            out.append(config)
    return out


def group_rows(
    groups: list[list[dict]] | SeedGroups, pool: list[dict], rounded: bool = True, students: bool = False
) -> list[dict]:
    """One row per configuration: mean ± std over its finished seeds, one run per seed. `rounded` gives
    "mean ± std" text for the screen; otherwise separate mean and std columns with every digit (the
    downloads). Given `SeedGroups`, each row names the runs that only repeated a seed; `students` adds a
    column naming the group's students."""
    seeds = groups if isinstance(groups, SeedGroups) else SeedGroups(groups, {})

    def cell(row: dict, name: str, values: list[float], scale: float = 1.0, digits: int = 2) -> None:
        mean, std = mean_std([v * scale for v in values if v is not None])
        if rounded:
            row[name] = None if mean is None else mean_std_text(mean, std, digits)
        else:
            row[f"{name} mean"], row[f"{name} std"] = mean, std

    rows = []
    for group in seeds.groups:
        done = _finished(group)
        first = group[0]
        row: dict[str, Any] = {"student": student_cell(group)} if students else {}
        row.update(configuration=group_label(group), seeds=len(group), finished=len(done))
        if seeds.duplicates:
            row["duplicates"] = duplicates_text(seeds.duplicates_of(group))
        cell(row, "best avg acc %", [r["best_avg"] for r in done], 100)
        dms, _ = group_delta_m(group, pool)
        cell(row, "Δm vs STL %", dms)
        row["params"] = first["params"]
        cell(row, "train_s", [r["train_seconds"] for r in done], digits=1)
        for task in first["config"]["tasks"]:
            if get_task(task).kind == "regression":
                cell(row, f"{task} MAE (digits)", [r["best"][task]["mae"] for r in done], VALUE_SCALE, 3)
            else:
                cell(row, f"{task} acc %", [r["best"][task]["acc"] for r in done], 100)
        row.update(
            model=first["model"],
            data=data_source(first),
            epochs=first["config"]["epochs"],
            **{"best epoch picked on": picked_on(first)},
        )
        rows.append(row)
    return rows


def picked_on(run: dict) -> str:
    n = run["config"].get("val_split", 0)
    return f"validation ({n:,} digits)" if n else "test set"


def band(histories: list[list[dict]], key: str = "avg_acc") -> tuple[list[int], list[float], list[float]]:
    """Per epoch, over the runs that reached it: the mean and the sample std of `key` (std 0 for one run)."""
    epochs, means, stds = [], [], []
    last = max((len(h) for h in histories), default=0)
    for i in range(last):
        values = [h[i][key] for h in histories if len(h) > i and h[i].get(key) is not None]
        if not values:
            continue
        mean, std = mean_std(values)
        epochs.append(next(h[i]["epoch"] for h in histories if len(h) > i))
        means.append(mean)
        stds.append(std or 0.0)
    return epochs, means, stds


def ordered_columns(rows: list[dict]) -> list[str]:
    """The comparison table's columns in one fixed order, whichever run is selected first: the summary,
    then every task's column in the task list's order, then the run's details."""
    seen = list(dict.fromkeys(k for r in rows for k in r))
    # Built-in tasks in the table's order, then the students' own in the order they appear.
    tasks = list(dict.fromkeys([*(t for t in TASKS), *(c.split(" ")[0] for c in seen if is_task(c.split(" ")[0]))]))
    per_task = [c for t in tasks for c in seen if c.startswith(f"{t} ")]
    summary = (
        "student",
        "run",
        "configuration",
        "seeds",
        "finished",
        "duplicates",
        "best avg acc %",
        "Δm vs STL %",
        "params",
        "train_s",
    )
    head = [c for c in seen if c not in per_task and c.split(" mean")[0].split(" std")[0] in summary]
    return head + per_task + [c for c in seen if c not in head and c not in per_task]


def seed_study_rows(runs: list[dict]) -> list[dict]:
    """The newest finished seed study (runs labelled "seed study <model>") beside the reference study's
    published figures, one row per model; [] until all three have finished."""
    newest = {}
    for r in sorted(runs, key=lambda r: r["created"], reverse=True):
        for m in SEED_MODELS:
            if r["label"] == f"seed study {m}" and r["status"] == "finished" and m not in newest:
                newest[m] = r
    if len(newest) < len(SEED_MODELS):
        return []
    rows = []
    for m in SEED_MODELS:
        r, ref = newest[m], SEED_STUDY["rows"][m]
        ours = None if r["best_avg"] is None else 100 * r["best_avg"]
        rows.append(
            {
                "model": m,
                "params": r["params"],
                "params (reference)": ref["params"],
                "best avg acc %": None if ours is None else round(ours, 2),
                "reference %": round(100 * ref["best_avg"], 2),
                "difference (pp)": None if ours is None else round(ours - 100 * ref["best_avg"], 2),
                "train_s": None if r["train_seconds"] is None else round(r["train_seconds"], 1),
                "train_s (reference)": ref["train_seconds"],
                "data": data_source(r),
                "epochs": r["config"]["epochs"],
            }
        )
    return rows


def comparison_json(table: list[dict], curves: list[dict]) -> str:
    """The Compare download: strict JSON (a missing or non-finite number is null, never a bare NaN)."""
    return json.dumps({"table": _finite(table), "curves": _finite(curves)}, allow_nan=False, default=str)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy and pandas scalars
        return _finite(obj.item())
    return obj


def curve_rows(run: dict, records: list[dict]) -> list[dict]:
    """Long format (run, epoch, task, quantity, value): what the curve CSV holds."""
    label, rows = run_label(run), []
    for rec in records:
        e = rec["epoch"]
        for task, v in rec["train_loss"].items():
            rows.append({"run": label, "epoch": e, "task": task, "quantity": "train loss", "value": v})
        split = rec.get("split", "test")  # "validation" where the run held digits out to pick its epoch
        for task, v in (rec.get("test_loss") or rec.get("val_loss") or {}).items():
            rows.append({"run": label, "epoch": e, "task": task, "quantity": f"{split} loss", "value": v})
        for task, m in rec["metrics"].items():
            for k, v in m.items():
                rows.append({"run": label, "epoch": e, "task": task, "quantity": f"{split} {k}", "value": v})
        if rec.get("avg_acc") is not None:
            avg = {"run": label, "epoch": e, "task": "average", "quantity": f"{split} acc", "value": rec["avg_acc"]}
            rows.append(avg)
        rows.append({"run": label, "epoch": e, "task": "all", "quantity": "seconds", "value": rec["seconds"]})
    return rows


def predictions_on_test_set(model: MultiTaskModel, data: MTLData) -> dict[str, dict[str, np.ndarray]]:
    """For every task: the true label and the model's prediction on each test digit (and the
    probability of the predicted class, or the regression value in digit units)."""
    return predictions_from_outputs(predict(model, data.test_x), data.test_y)


def predictions_from_outputs(outputs: dict[str, np.ndarray], test_y) -> dict[str, dict[str, np.ndarray]]:
    """`predictions_on_test_set` from outputs already computed (`Training.test_outputs`: the same
    forward pass, precision included, that scored the epochs)."""
    targets = make_targets(torch.as_tensor(test_y), tuple(outputs))
    result = {}
    for task in outputs:
        out, y = outputs[task], targets[task].numpy()
        if get_task(task).kind == "regression":
            result[task] = {"true": y * VALUE_SCALE, "pred": out * VALUE_SCALE}
        else:
            result[task] = {"true": y, "pred": out.argmax(axis=1), "confidence": out.max(axis=1)}
    return result


def predictions_bytes(preds: dict[str, dict[str, np.ndarray]]) -> bytes:
    """Test-set predictions as safetensors (no code, like the models): keys are "task/field"."""
    from safetensors.numpy import save

    return save({f"{task}/{k}": np.ascontiguousarray(v) for task, p in preds.items() for k, v in p.items()})


def load_predictions(path: str) -> dict[str, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(path).items():
        task, field = key.split("/", 1)
        out.setdefault(task, {})[field] = value
    return out


def confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (true.astype(int), pred.astype(int)), 1)
    return m


def is_mistake(preds: dict[str, dict[str, np.ndarray]], i: int, value_tolerance: float = 0.5) -> bool:
    """A test digit counts as a mistake when any task is wrong (value: off by more than half a digit)."""
    for task, p in preds.items():
        if get_task(task).kind == "regression":
            if abs(p["pred"][i] - p["true"][i]) > value_tolerance:
                return True
        elif p["pred"][i] != p["true"][i]:
            return True
    return False


def run_affinity(records: list[dict]) -> dict[str, float]:
    """The lookahead affinity of a run (`Training._lookahead_affinity`), averaged over every probed epoch,
    as Fifty et al. average it over training: {"i|j": how much a step on task i lowered task j's loss}."""
    return mean_by_key([r["conflict"]["affinity"] for r in records if (r.get("conflict") or {}).get("affinity")])


def _partitions(items: list[str]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):  # `first` joins an existing group...
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]
        yield [[first], *part]  # ...or starts its own


def suggest_grouping(affinity: dict[str, float], tasks: list[str] | tuple[str, ...]) -> list[tuple[str, ...]]:
    """The grouping of the tasks that task affinity favours (Fifty et al. 2021): every partition of the
    tasks is scored by how much, on average, each task's loss is lowered by steps on the other tasks of
    its group (a task alone scores 0), and the best wins; on a tie, the one with fewer groups. So tasks
    are trained together only where they help each other, and apart where they do not."""
    best, best_key = None, None
    for part in _partitions(list(tasks)):
        score = 0.0
        for group in part:
            for j in group:
                others = [i for i in group if i != j]
                if others:
                    score += sum(affinity.get(f"{i}|{j}", 0.0) for i in others) / len(others)
        key = (round(score, 12), -len(part))
        if best_key is None or key > best_key:
            best, best_key = part, key
    order = {t: n for n, t in enumerate(tasks)}
    groups = [tuple(sorted(g, key=order.__getitem__)) for g in best or []]
    return sorted(groups, key=lambda g: order[g[0]])
