"""The run store: one SQLite database (WAL) with a row per run and a row per epoch record.

Every process opens its own connection; the dashboard, the workers and the CLI share the file.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "finished", "failed", "cancelled", "diverged")
ACTIVE = ("queued", "running")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    params INTEGER,
    train_seconds REAL,
    best_epoch INTEGER,
    best TEXT,
    best_avg REAL,
    data_source TEXT,
    device TEXT,
    weights_path TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created);
"""


def default_home() -> Path:
    """Where runs and model files live: $MTL_HOME, else a folder in the user's data dir."""
    env = os.environ.get("MTL_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mtl-playground"


def _json_safe(obj: Any) -> Any:
    """NaN and infinity are not JSON; store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


class RunStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_home() / "runs.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.models_dir = self.path.parent / "models"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        try:
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    # -- writing ------------------------------------------------------------------------------

    def create_run(self, config: dict, owner: str = "", label: str = "") -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, owner, label, model, config, status, created) VALUES (?,?,?,?,?,?,?)",
                (run_id, owner, label, config["model"], json.dumps(config), "queued", time.time()),
            )
        return run_id

    def claim_next(self, pid: int) -> str | None:
        """Atomically take the oldest queued run for a worker; None when the queue is empty."""
        with self._connect() as db:
            row = db.execute(
                "UPDATE runs SET status='running', started=?, worker_pid=? WHERE id=("
                "SELECT id FROM runs WHERE status='queued' AND stop_requested=0 ORDER BY created LIMIT 1"
                ") AND status='queued' RETURNING id",
                (time.time(), pid),
            ).fetchone()
        return row[0] if row else None

    def mark_started(self, run_id: str, params: int, data_source: str, device: str) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET params=?, data_source=?, device=? WHERE id=?", (params, data_source, device, run_id)
            )

    def add_epoch(self, run_id: str, record: dict) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, record) VALUES (?,?,?)",
                (run_id, int(record["epoch"]), json.dumps(_json_safe(record))),
            )

    def finish(
        self, run_id: str, status: str, reason: str = "", summary: dict | None = None, weights_path: str | None = None
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        s = summary or {}
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status=?, reason=?, finished=?, train_seconds=?, best_epoch=?, best=?, best_avg=?, "
                "weights_path=COALESCE(?, weights_path), params=COALESCE(?, params) WHERE id=?",
                (
                    status,
                    reason,
                    time.time(),
                    s.get("train_seconds"),
                    s.get("best_epoch"),
                    json.dumps(_json_safe(s.get("best_metrics", {}))),
                    s.get("best_avg"),
                    weights_path,
                    s.get("params"),
                    run_id,
                ),
            )

    def request_stop(self, run_id: str) -> None:
        """Ask a run to stop: a queued run is cancelled at once, a running one at its next batch."""
        with self._connect() as db:
            db.execute("UPDATE runs SET stop_requested=1 WHERE id=?", (run_id,))
            db.execute(
                "UPDATE runs SET status='cancelled', reason='cancelled before it started', finished=? "
                "WHERE id=? AND status='queued'",
                (time.time(), run_id),
            )

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT stop_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        run = self.get_run(run_id)
        with self._connect() as db:
            db.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        if run and run.get("weights_path"):
            Path(run["weights_path"]).unlink(missing_ok=True)

    def fail_orphans(self, alive_pids: set[int]) -> int:
        """Mark running runs whose worker is gone as failed (e.g. the server was restarted)."""
        with self._connect() as db:
            rows = db.execute("SELECT id, worker_pid FROM runs WHERE status='running'").fetchall()
            n = 0
            for row in rows:
                pid = row["worker_pid"]
                if pid in alive_pids or (pid and _pid_alive(pid)):
                    continue
                db.execute(
                    "UPDATE runs SET status='failed', reason='worker stopped unexpectedly (server restarted?)', "
                    "finished=? WHERE id=?",
                    (time.time(), row["id"]),
                )
                n += 1
        return n

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["config"] = json.loads(d["config"])
        d["best"] = json.loads(d["best"]) if d["best"] else {}
        return d

    def get_run(self, run_id: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._row(row) if row else None

    def list_runs(self, owner: str | None = None, statuses: tuple[str, ...] | None = None) -> list[dict]:
        """Newest first; owner None lists everyone's runs."""
        sql, args = "SELECT * FROM runs", []
        where = []
        if owner is not None:
            where.append("owner=?")
            args.append(owner)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY created DESC", args).fetchall()
        return [self._row(r) for r in rows]

    def epochs(self, run_id: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT record FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count_active(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status IN ('queued','running')").fetchone()[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
