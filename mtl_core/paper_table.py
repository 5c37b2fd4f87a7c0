"""Sener & Koltun's MultiMNIST table (mtl_core/reference.py) trained here: every row over seeds, on the
paper's recipe (TrainConfig.preset of the LeNets) with a validation split, and ours beside the published
figures as mean ± std, with which differences survive the spread between seeds."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mtl_core.config import TrainConfig
from mtl_core.metrics import mean_std
from mtl_core.reference import MULTIMNIST_STUDY

LABEL = "table"  # its runs are labelled "table <row> · seed <n>"
ROWS = MULTIMNIST_STUDY["rows"]
TASKS = ("left", "right")
PAPER_EPOCHS, QUICK_EPOCHS = 100, 20
VAL_SPLIT = 6000  # 10 % of MultiMNIST's training images pick the epoch; the test set is scored once
# A run ends once its validation score has not improved for this many epochs: the LeNets peak well before
# the paper's 100 (BENCHMARKS.md), and the best epoch is the one scored either way.
PATIENCE = 15
_LABEL = re.compile(rf"^{LABEL} (.+) · seed (\d+)$")


def table_configs(
    seeds: int, epochs: int = PAPER_EPOCHS, val_split: int = VAL_SPLIT, train_limit: int = 0, patience: int = PATIENCE
) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every run of the table: each row's model and weighting, seeds 0 .. seeds - 1
    (`train_limit`: only the first N training images, a dry run; `patience` 0: every epoch)."""
    return [
        (f"{LABEL} {name} · seed {seed}",
         TrainConfig.preset(model, loss_weighting=weighting, seed=seed, epochs=epochs, val_split=val_split,
                            train_limit=train_limit, patience=patience if patience < epochs else 0))
        for name, model, weighting, _ in ROWS
        for seed in range(seeds)
    ]  # fmt: skip


@dataclass(frozen=True)
class TableRow:
    name: str
    seeds: int  # finished runs (one per seed; a repeated seed counts once, the newest)
    mean: dict[str, float | None]  # task -> test accuracy in %, mean over seeds
    std: dict[str, float | None]
    published: dict[str, tuple[float, float]]  # source -> (left, right)
    epochs: int | None

    def close_to(self, source: str) -> bool | None:
        """Each task within 1 point of `source`'s figure, or within two standard errors of it."""
        if any(self.mean[t] is None for t in TASKS):
            return None
        ok = []
        for t, published in zip(TASKS, self.published[source]):
            se = (self.std[t] or 0.0) / math.sqrt(self.seeds) if self.seeds > 1 else 0.0
            ok.append(abs(self.mean[t] - published) <= max(1.0, 2 * se))
        return all(ok)


def table_rows(runs: list[dict]) -> list[TableRow]:
    """The table from the store's finished table runs (the newest run of each row and seed)."""
    newest: dict[tuple[str, int], dict] = {}
    for r in sorted(runs, key=lambda r: r["created"], reverse=True):
        m = _LABEL.match(r.get("label") or "")
        if m and r["status"] == "finished" and r.get("best") and (m.group(1), int(m.group(2))) not in newest:
            newest[(m.group(1), int(m.group(2)))] = r
    rows = []
    for name, _, _, published in ROWS:
        done = [r for (row, _), r in newest.items() if row == name]
        stats = {t: mean_std([100 * r["best"][t]["acc"] for r in done if t in r["best"]]) for t in TASKS}
        epochs = {r["config"]["epochs"] for r in done}
        rows.append(
            TableRow(name, len(done), {t: s[0] for t, s in stats.items()}, {t: s[1] for t, s in stats.items()},
                     published, epochs.pop() if len(epochs) == 1 else None)
        )  # fmt: skip
    return rows


def differences(rows: list[TableRow], against: str = "single task") -> list[str]:
    """For each row and task, its difference to `against` and whether it survives the spread: larger than
    two standard errors of the difference (over seeds). Phrases for a sentence; [] until there is a spread."""
    base = next((r for r in rows if r.name == against), None)
    if base is None or base.seeds < 2:
        return []
    out = []
    for row in rows:
        if row is base or row.seeds < 2:
            continue
        for t in TASKS:
            diff = row.mean[t] - base.mean[t]
            se = math.sqrt(row.std[t] ** 2 / row.seeds + base.std[t] ** 2 / base.seeds)
            verdict = "beyond the spread" if abs(diff) > 2 * se else "within the spread"
            out.append(f"{row.name} {t} {diff:+.2f} ({verdict})")
    return out
