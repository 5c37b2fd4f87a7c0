"""`python -m mtl_core runs [--json FILE]`: the store's runs as a table or JSON, read without changing it.

The store is read through the salvage reader (mtl_core/store/salvage.py), so a damaged store still lists every
run SQLite can read, and the file is never written, moved or repaired (only the server does that).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mtl_core.store import salvage
from mtl_core.store.runs import default_store_path

COLUMNS = ("id", "student", "model", "tasks", "status", "best_avg", "created")


def store_runs(path: str | Path) -> list[dict]:
    """Every readable run of the store at `path`, newest first, as plain values (the file is left as it is)."""
    rows = salvage.read_rows(path)
    names = {o.get("owner"): o.get("name") or "" for o in rows["owners"]}
    out = []
    for r in salvage.usable_runs(rows["runs"]):
        config = json.loads(r["config"])
        out.append(
            {
                "id": r["id"],
                "student": names.get(r.get("owner"), ""),
                "model": r["model"],
                "tasks": list(config.get("tasks") or []),
                "status": r.get("status") or "",
                "best_avg": r.get("best_avg"),
                "best_epoch": r.get("best_epoch"),
                "label": r.get("label") or "",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(r["created"]))),
                "weights_path": r.get("weights_path"),
            }
        )
    return sorted(out, key=lambda d: d["created"], reverse=True)


def _table(runs: list[dict]) -> str:
    def cell(run: dict, col: str) -> str:
        v = run[col]
        if col == "tasks":
            return ",".join(v)
        if col == "best_avg":
            return f"{v:.2%}" if isinstance(v, (int, float)) else "-"
        return str(v).replace("\n", " ")

    cells = [[cell(r, c) for c in COLUMNS] for r in runs]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def cmd_runs(json_out: str | None = None, path: str | Path | None = None) -> int:
    """List the runs; 0 on success (a damaged store lists what can be read), 2 when there is no store."""
    path = Path(path or default_store_path())
    if not path.is_file() or path.stat().st_size == 0:
        what = "is empty" if path.is_file() else "does not exist"
        print(f"There is no run store to list: {path} {what} (MTL_HOME chooses the folder).", file=sys.stderr)
        return 2
    runs = store_runs(path)
    if not salvage.intact(path):
        print(f"The run store {path} is damaged; these are the {len(runs)} runs that could be read.", file=sys.stderr)
    if json_out is None:
        print(_table(runs) if runs else "No runs in the store.")
    elif json_out == "-":
        print(json.dumps(runs, indent=1))
    else:
        Path(json_out).write_text(json.dumps(runs, indent=1) + "\n")
    return 0
