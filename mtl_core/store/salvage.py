"""Reading what SQLite can still read from a damaged run store, and each run's record kept beside its model.

`read_rows` never touches the file it reads: it copies the store (and its WAL) to a temporary folder and
reads the copy, table by table: the full scan first, and where that stops on a damaged page, one row
at a time by rowid, so the rows behind a bad page are still found through the pages that lead to them.

A run's sidecar (`models/<run id>.run.json`) holds its record and its epochs. The worker writes it when
the run ends, and also when the store goes missing or unwritable under a running run (from what the
worker kept in memory), so a run whose store was truncated, deleted or damaged beyond reading comes back
when the server starts or recovers its store (`RunStore.adopt_sidecars`).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

from mtl_core.checkpoint import atomic_write_bytes

TABLES = ("runs", "epochs", "owners", "meta")
MISS_LIMIT = 2000  # consecutive rowids that could not be read before giving up on a table
SIDECAR_SUFFIX = ".run.json"


def _table_rows(db: sqlite3.Connection, table: str) -> list[dict]:
    """Every row of `table` that can be read: the full scan, then per-rowid reads past a damaged page."""
    db.row_factory = sqlite3.Row
    rows: dict[int, dict] = {}
    try:
        for r in db.execute(f"SELECT rowid AS _rowid_, * FROM {table} NOT INDEXED"):  # noqa: S608 - fixed names
            d = dict(r)
            rows[d.pop("_rowid_")] = d
        return list(rows.values())
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc):
            return []  # a store from before this table, or its schema entry is lost: nothing to read by rowid
        # else a damaged page: read the rest one row at a time
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0  # noqa: S608
    except sqlite3.DatabaseError:
        top = None  # the rightmost path is damaged too: read until a long run of misses
    rowid, misses = 0, 0
    while misses < MISS_LIMIT and (top is None or rowid < top):
        rowid += 1
        if rowid in rows:
            misses = 0
            continue
        try:
            r = db.execute(f"SELECT * FROM {table} NOT INDEXED WHERE rowid=?", (rowid,)).fetchone()  # noqa: S608
        except sqlite3.DatabaseError:
            r = None
        if r is None:
            misses += 1
        else:
            rows[rowid], misses = dict(r), 0
    return list(rows.values())


def _read_copy(path: Path, with_wal: bool) -> dict[str, list[dict]]:
    with tempfile.TemporaryDirectory(prefix="mtl-salvage-") as tmp:
        copy = Path(tmp) / "store.sqlite"
        shutil.copyfile(path, copy)
        wal = Path(str(path) + "-wal")
        if with_wal and wal.exists():
            shutil.copyfile(wal, Path(str(copy) + "-wal"))
        db = sqlite3.connect(copy, isolation_level=None)
        try:
            out = {}
            for table in TABLES:
                try:
                    out[table] = _table_rows(db, table)
                except sqlite3.DatabaseError:
                    out[table] = []  # the table is unknown: its schema entry was on a damaged page
            return out
        finally:
            db.close()


def read_rows(path: str | Path) -> dict[str, list[dict]]:
    """Every readable row of each table (runs, epochs, owners, meta) of the store at `path`, which is
    left exactly as it was. With its WAL first; if that reads less (a damaged WAL), without it."""
    path = Path(path)
    best: dict[str, list[dict]] = {t: [] for t in TABLES}
    for with_wal in (True, False):
        try:
            got = _read_copy(path, with_wal)
        except (sqlite3.DatabaseError, OSError):
            continue
        if len(got["runs"]) + len(got["epochs"]) > len(best["runs"]) + len(best["epochs"]):
            best = got
        if got["runs"]:
            break
    return best


def intact(path: str | Path) -> bool:
    """Whether SQLite's quick check passes on a copy of the store (the file itself is not opened)."""
    try:
        with tempfile.TemporaryDirectory(prefix="mtl-check-") as tmp:
            copy = Path(tmp) / "store.sqlite"
            shutil.copyfile(path, copy)
            if Path(str(path) + "-wal").exists():
                shutil.copyfile(Path(str(path) + "-wal"), Path(str(copy) + "-wal"))
            db = sqlite3.connect(copy, isolation_level=None)
            try:
                return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            finally:
                db.close()
    except (sqlite3.DatabaseError, OSError):
        return False


def usable_runs(rows: list[dict]) -> list[dict]:
    """Run rows whose few required fields survived: an id, a model, a config that is JSON, a creation time."""
    out = []
    for r in rows:
        try:
            ok = isinstance(r.get("id"), str) and r["id"] and isinstance(r.get("model"), str)
            ok = ok and isinstance(json.loads(r.get("config") or ""), dict) and float(r.get("created")) > 0
        except (TypeError, ValueError):
            ok = False
        if ok:
            out.append(r)
    return out


def sidecar_path(models_dir: Path, run_id: str) -> Path:
    return Path(models_dir) / f"{run_id}{SIDECAR_SUFFIX}"


def write_sidecar(models_dir: Path, run: dict, epochs: list[dict]) -> bool:
    """Keep a run's record and curve beside its model file; False when the disk refuses (nothing else to do)."""
    run = {k: v for k, v in run.items() if k != "student"}
    payload = json.dumps({"run": run, "epochs": epochs}, allow_nan=False, default=str).encode()
    try:
        atomic_write_bytes(sidecar_path(models_dir, run["id"]), payload)
    except (OSError, ValueError):
        return False
    return True


def sidecar_files(models_dir: Path) -> dict[str, Path]:
    """{run id: its sidecar} for every sidecar in `models_dir` (none when the folder is missing)."""
    try:
        found = sorted(Path(models_dir).glob(f"*{SIDECAR_SUFFIX}"))
    except OSError:
        return {}
    return {p.name[: -len(SIDECAR_SUFFIX)]: p for p in found}


def read_sidecars(paths: list[Path]) -> list[dict]:
    """Those of `paths` that parse as sidecars: {"run": {...}, "epochs": [...]}."""
    out = []
    for p in paths:
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("run"), dict) and isinstance(d.get("epochs"), list):
            out.append(d)
    return out
