"""The run store: one SQLite database (WAL) with a row per run, a row per epoch record, and the owners.

Every process opens its own connection; the dashboard, the workers and the CLI share the file. Every
status change is guarded by the status (and worker) it expects, so a late writer can never overwrite
a run that another process has already finished, and caps are checked in the same transaction that
inserts, so two quick submits cannot both pass a cap.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "finished", "failed", "cancelled", "diverged", "interrupted")
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
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
"""
# Columns added after the first release; an older store gets them on open.
ADDED_COLUMNS = {
    "worker": "TEXT",
    "heartbeat": "REAL",
    "client": "TEXT NOT NULL DEFAULT ''",
    "preds_path": "TEXT",
    "epoch_done": "REAL",  # how far through the current epoch (0..1), written with the heartbeat
}
# The change counter: pages compare it before redrawing. Heartbeats alone do not count as a change.
TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS bump_run_insert AFTER INSERT ON runs
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
CREATE TRIGGER IF NOT EXISTS bump_run_delete AFTER DELETE ON runs
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
CREATE TRIGGER IF NOT EXISTS bump_run_update AFTER UPDATE OF
    status, reason, label, params, device, data_source, weights_path, stop_requested, best_epoch ON runs
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
CREATE TRIGGER IF NOT EXISTS bump_epoch_insert AFTER INSERT ON epochs
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
CREATE TRIGGER IF NOT EXISTS bump_owner_name AFTER UPDATE OF name ON owners
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
CREATE TRIGGER IF NOT EXISTS bump_setting AFTER UPDATE ON meta WHEN NEW.key <> 'version'
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
CREATE TRIGGER IF NOT EXISTS bump_new_setting AFTER INSERT ON meta WHEN NEW.key <> 'version'
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
"""
# Class-wide switches the teacher sets, kept in the meta table as 0/1.
SETTINGS = ("gallery", "gallery_downloads")


class QueueFull(RuntimeError):
    """Too many queued or running jobs; the message says how many and what to do."""


class StoreUnavailable(RuntimeError):
    """The run store cannot be opened or written (read-only or full disk); the message is a sentence."""


@dataclass(frozen=True)
class Limits:
    """How many jobs may be queued or running at once: per browser, per client address, on the server."""

    per_owner: int = 4
    per_client: int = 8
    total: int = 32

    @classmethod
    def from_env(cls) -> Limits:
        def env(name: str, default: int) -> int:
            return max(1, int(os.environ.get(name, default)))

        return cls(env("MTL_MAX_PER_OWNER", 4), env("MTL_MAX_PER_CLIENT", 8), env("MTL_MAX_JOBS", 32))


def default_home() -> Path:
    """Where runs and model files live: $MTL_HOME, else a folder in the user's data dir."""
    env = os.environ.get("MTL_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mtl-playground"


def default_store_path() -> Path:
    return default_home() / "runs.sqlite"


def _json_safe(obj: Any) -> Any:
    """NaN and infinity are not JSON; store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Damage to the file itself, as opposed to a lock, a read-only or a full disk."""
    msg = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or "malformed" in msg or "not a database" in msg


def _disk_nearly_full(folder: Path | None) -> bool:
    try:
        return folder is not None and shutil.disk_usage(folder).free < 1024 * 1024
    except OSError:
        return False


def _unwritable(exc: sqlite3.OperationalError, folder: Path | None = None) -> StoreUnavailable:
    """A sentence for a store that cannot be written. SQLite reports a full disk as "disk I/O error"
    when the write that failed was to its WAL index, so the free space is looked at too."""
    msg = str(exc).lower()
    if "full" in msg or _disk_nearly_full(folder):
        why = "the disk is full"
    elif "readonly" in msg or "read-only" in msg or "unable to open" in msg:
        why = "its folder is read-only"
    else:
        why = str(exc)
    return StoreUnavailable(f"The run store cannot be written ({why}); finished runs can still be viewed.")


class RunStore:
    def __init__(self, path: str | Path | None = None, repair: bool = True):
        """Open (or create) the store. With `repair`, a damaged or truncated file is moved aside and a
        new store started (the server does this); without, the damage is raised (workers)."""
        self.path = Path(path) if path else default_store_path()
        self.models_dir = self.path.parent / "models"
        self.notice = ""  # a sentence for the dashboard when the store had to be moved aside
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"The run store's folder {self.path.parent} cannot be created: {exc}.") from exc
        if repair and self.path.exists() and self.path.stat().st_size == 0:
            self._move_aside("was empty (0 bytes): truncated, or never written")
        self.read_only = False
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                self._open_read_only(exc)
                return
            if not repair:
                raise
            self._move_aside(f"could not be read ({exc})")
            self._init_schema()

    def _open_read_only(self, exc: sqlite3.OperationalError) -> None:
        """A disk that is read-only or full: keep what is there viewable, start nothing new."""
        if not self.path.exists():
            raise _unwritable(exc, self.path.parent) from exc
        self.read_only = True
        self.notice = str(_unwritable(exc, self.path.parent)).replace("viewed.", "viewed, but no new run can start.")
        try:
            with self._connect() as db:
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as again:
            raise _unwritable(again, self.path.parent) from again

    def _init_schema(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            if self.path.stat().st_size > 0:
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            for col, decl in ADDED_COLUMNS.items():
                if col not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")
            db.executescript(TRIGGERS)
        finally:
            db.close()

    def _move_aside(self, why: str) -> None:
        """Keep a damaged store for inspection under a new name; never overwrite it silently."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        self.notice = (
            f"The run store {why}. It was moved aside to {aside.name} and a new, empty store was started; "
            "model files in the models folder were left untouched."
        )

    def _query(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        """Rows of a read. On a full disk even a read can fail (WAL recovery wants to write): then the
        store is read without writing anything, so finished runs stay viewable."""
        try:
            with self._connect() as db:
                return db.execute(sql, args).fetchall()
        except StoreUnavailable:
            if self.read_only:
                raise
        db = self._connect_read_only()
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            raise _unwritable(exc, self.path.parent) from exc
        finally:
            db.close()

    def _connect_read_only(self) -> sqlite3.Connection:
        """SQLite itself refuses every write. A WAL store whose -shm file is gone cannot be opened
        read-only the usual way; on a read-only disk nothing can change it, so `immutable` is safe."""
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            db.execute("SELECT 1 FROM meta LIMIT 1")
            return db
        except sqlite3.OperationalError:
            return sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, isolation_level=None)

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; `write=True` holds the write lock from the start (BEGIN IMMEDIATE), so a
        check and the write that depends on it happen in one transaction."""
        try:
            if self.read_only:
                db = self._connect_read_only()
            else:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise _unwritable(exc, self.path.parent) from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA foreign_keys=ON")
            # WAL with NORMAL sync: commits stay atomic and survive a crashed process; only a power cut
            # can lose the last ones. FULL would fsync every heartbeat and epoch.
            db.execute("PRAGMA synchronous=NORMAL")
            if write:
                db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise
            if db.in_transaction:
                db.commit()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower() or "no such" in str(exc).lower():
                raise
            raise _unwritable(exc, self.path.parent) from exc
        finally:
            db.close()

    # -- writing ------------------------------------------------------------------------------

    def create_run(self, config: dict, owner: str = "", label: str = "", client: str = "") -> str:
        """Queue one run with no caps (the CLI and tests); the dashboard goes through `create_runs`."""
        return self.create_runs([config], owner, [label], client, limits=None)[0]

    def create_runs(
        self,
        configs: list[dict],
        owner: str = "",
        labels: list[str] | None = None,
        client: str = "",
        limits: Limits | None = None,
    ) -> list[str]:
        """Queue all of `configs` or none: the caps are checked in the transaction that inserts them."""
        labels = labels or [""] * len(configs)
        ids = [time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6] for _ in configs]
        with self._connect(write=True) as db:
            if limits is not None:
                self._check_caps(db, len(configs), owner, client, limits)
            now = time.time()
            for run_id, config, label in zip(ids, configs, labels):
                db.execute(
                    "INSERT INTO runs (id, owner, label, model, config, status, created, client) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (run_id, owner, label, config["model"], json.dumps(config), "queued", now, client),
                )
        return ids

    @staticmethod
    def _check_caps(db: sqlite3.Connection, n: int, owner: str, client: str, limits: Limits) -> None:
        def active(where: str = "", *args: Any) -> int:
            sql = "SELECT COUNT(*) FROM runs WHERE status IN ('queued','running')" + where
            return db.execute(sql, args).fetchone()[0]

        mine = active(" AND owner=?", owner)
        if mine + n > limits.per_owner:
            raise QueueFull(
                f"you already have {mine} {'job' if mine == 1 else 'jobs'} queued or running and this adds {n} "
                f"(limit {limits.per_owner}); wait for one to finish or stop one"
            )
        if client:
            theirs = active(" AND client=?", client)
            if theirs + n > limits.per_client:
                raise QueueFull(
                    f"this computer already has {theirs} jobs queued or running from all its tabs "
                    f"(limit {limits.per_client}); wait for one to finish or stop one"
                )
        total = active()
        if total + n > limits.total:
            raise QueueFull(f"the server's job queue is full ({total} jobs); try again in a minute")

    def claim_next(self, worker: str, pid: int | None = None) -> str | None:
        """Atomically take the next queued run for a worker; None when the queue is empty.

        Fair across owners (round robin): the owner with the fewest running jobs goes first, then the
        owner who last had a job started longest ago, then the oldest run."""
        now = time.time()
        with self._connect(write=True) as db:
            row = db.execute(
                "UPDATE runs SET status='running', started=?, worker=?, worker_pid=?, heartbeat=? WHERE id=("
                " SELECT q.id FROM runs q WHERE q.status='queued' AND q.stop_requested=0 ORDER BY"
                "  (SELECT COUNT(*) FROM runs r WHERE r.owner=q.owner AND r.status='running'),"
                "  (SELECT COALESCE(MAX(r.started), 0) FROM runs r WHERE r.owner=q.owner AND r.id<>q.id),"
                "  q.created, q.id LIMIT 1"
                ") AND status='queued' RETURNING id",
                (now, worker, pid, now),
            ).fetchone()
        return row[0] if row else None

    def _guarded(self, sql: str, args: tuple, run_id: str, worker: str) -> bool:
        """Run an UPDATE that applies only while `worker` still holds the running run."""
        with self._connect(write=True) as db:
            cur = db.execute(sql + " WHERE id=? AND status='running' AND worker=?", (*args, run_id, worker))
            return cur.rowcount > 0

    def heartbeat(self, run_id: str, worker: str, epoch_done: float | None = None) -> bool:
        """The worker is alive; `epoch_done` (0..1) is how far it is through the epoch it trains."""
        return self._guarded(
            "UPDATE runs SET heartbeat=?, epoch_done=COALESCE(?, epoch_done)", (time.time(), epoch_done), run_id, worker
        )

    def within_epoch(self, run_id: str) -> float | None:
        """How far the running epoch is (0..1), as of the last heartbeat; None when unknown. Not counted
        as a change (pages that show it read it on each poll of a running run)."""
        try:
            rows = self._query("SELECT epoch_done FROM runs WHERE id=? AND status='running'", (run_id,))
        except sqlite3.OperationalError:  # an older store opened read-only has no such column yet
            return None
        return rows[0][0] if rows and rows[0][0] is not None else None

    def mark_started(self, run_id: str, worker: str, params: int, data_source: str, device: str) -> bool:
        return self._guarded(
            "UPDATE runs SET params=?, data_source=?, device=?", (params, data_source, device), run_id, worker
        )

    def add_epoch(self, run_id: str, record: dict, worker: str | None = None) -> bool:
        """Append an epoch record; with `worker`, only while that worker still holds the run."""
        with self._connect(write=True) as db:
            if worker is not None:
                row = db.execute("SELECT 1 FROM runs WHERE id=? AND status='running' AND worker=?", (run_id, worker))
                if row.fetchone() is None:
                    return False
            db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, record) VALUES (?,?,?)",
                (run_id, int(record["epoch"]), json.dumps(_json_safe(record))),
            )
        return True

    def set_best(self, run_id: str, worker: str, best_epoch: int, weights_path: str) -> bool:
        """Record that the best weights so far are on disk, so an interrupted run keeps them."""
        return self._guarded("UPDATE runs SET best_epoch=?, weights_path=?", (best_epoch, weights_path), run_id, worker)

    def finish(
        self,
        run_id: str,
        status: str,
        reason: str = "",
        summary: dict | None = None,
        weights_path: str | None = None,
        worker: str | None = None,
        preds_path: str | None = None,
    ) -> bool:
        """End a running run. With `worker`, only if that worker still holds it; returns whether it did."""
        if status not in STATUSES or status in ACTIVE:
            raise ValueError(f"not a final status: {status!r}")
        s = summary or {}
        sql = (
            "UPDATE runs SET status=?, reason=?, finished=?, train_seconds=COALESCE(?, train_seconds), "
            "best_epoch=COALESCE(?, best_epoch), best=COALESCE(?, best), best_avg=COALESCE(?, best_avg), "
            "weights_path=COALESCE(?, weights_path), params=COALESCE(?, params), preds_path=COALESCE(?, preds_path) "
            "WHERE id=? AND status IN "
            "('queued','running')"
        )
        args: list[Any] = [
            status,
            reason,
            time.time(),
            s.get("train_seconds"),
            s.get("best_epoch") or None,
            json.dumps(_json_safe(s["best_metrics"])) if s.get("best_metrics") else None,
            s.get("best_avg"),
            weights_path,
            s.get("params"),
            preds_path,
            run_id,
        ]
        if worker is not None:
            sql += " AND worker=?"
            args.append(worker)
        with self._connect(write=True) as db:
            return db.execute(sql, args).rowcount > 0

    def request_stop(self, run_id: str) -> None:
        """Ask a run to stop: a queued run is cancelled at once, a running one at its next batch."""
        with self._connect(write=True) as db:
            db.execute("UPDATE runs SET stop_requested=1 WHERE id=? AND status IN ('queued','running')", (run_id,))
            db.execute(
                "UPDATE runs SET status='cancelled', reason='cancelled before it started', finished=? "
                "WHERE id=? AND status='queued'",
                (time.time(), run_id),
            )

    def stop_requested(self, run_id: str) -> bool:
        rows = self._query("SELECT stop_requested FROM runs WHERE id=?", (run_id,))
        return bool(rows and rows[0][0])

    def delete_run(self, run_id: str) -> None:
        run = self.get_run(run_id)
        with self._connect(write=True) as db:
            db.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        for key in ("weights_path", "preds_path"):
            if run and run.get(key):
                Path(run[key]).unlink(missing_ok=True)

    def interrupt_worker(self, worker: str, reason: str) -> list[str]:
        """A worker that is known to be gone: its running run ends as interrupted (curve and best kept)."""
        with self._connect(write=True) as db:
            rows = db.execute(
                "UPDATE runs SET status='interrupted', reason=?, finished=? WHERE status='running' AND worker=? "
                "RETURNING id",
                (reason, time.time(), worker),
            ).fetchall()
        return [r[0] for r in rows]

    def interrupt_stale(self, max_age_s: float, reason: str = "") -> list[str]:
        """Running runs whose worker has not written a heartbeat for `max_age_s` end as interrupted."""
        reason = reason or f"its worker stopped answering (no heartbeat for {max_age_s:.0f} s)"
        with self._connect(write=True) as db:
            rows = db.execute(
                "UPDATE runs SET status='interrupted', reason=?, finished=? "
                "WHERE status='running' AND COALESCE(heartbeat, started, 0) < ? RETURNING id",
                (reason, time.time(), time.time() - max_age_s),
            ).fetchall()
        return [r[0] for r in rows]

    def cancel_abandoned(self, max_age_s: float) -> list[str]:
        """Queued runs of browsers not seen for `max_age_s` are cancelled, so a closed tab does not hold
        the queue. Owners never seen by the dashboard (the CLI) are left alone."""
        with self._connect(write=True) as db:
            rows = db.execute(
                "UPDATE runs SET status='cancelled', reason='its browser tab was closed before it started', "
                "finished=? WHERE status='queued' AND owner IN (SELECT owner FROM owners WHERE seen < ?) "
                "RETURNING id",
                (time.time(), time.time() - max_age_s),
            ).fetchall()
        return [r[0] for r in rows]

    def touch_owner(self, owner: str, name: str | None = None) -> None:
        """Note that a browser is still there (and, given, its display name)."""
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO owners (owner, name, seen) VALUES (?, COALESCE(?, ''), ?) "
                "ON CONFLICT(owner) DO UPDATE SET seen=excluded.seen, name=COALESCE(?, name)",
                (owner, name, time.time(), name),
            )

    def set_setting(self, name: str, on: bool) -> None:
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}; valid: {', '.join(SETTINGS)}")
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (name, int(bool(on))),
            )

    def setting(self, name: str) -> bool:
        rows = self._query("SELECT value FROM meta WHERE key=?", (name,))
        return bool(rows and rows[0][0])

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["config"] = json.loads(d["config"])
        d["best"] = json.loads(d["best"]) if d["best"] else {}
        return d

    def version(self) -> int:
        """A counter that grows with every change a page would show (not with heartbeats)."""
        return self._query("SELECT value FROM meta WHERE key='version'")[0][0]

    # Every run comes with its student's display name (empty when none was given).
    _SELECT = "SELECT runs.*, COALESCE(owners.name, '') AS student FROM runs LEFT JOIN owners USING (owner)"

    def get_run(self, run_id: str) -> dict | None:
        rows = self._query(self._SELECT + " WHERE id=?", (run_id,))
        return self._row(rows[0]) if rows else None

    def list_runs(self, owner: str | None = None, statuses: tuple[str, ...] | None = None) -> list[dict]:
        """Newest first; owner None lists everyone's runs."""
        sql, args = self._SELECT, []
        where = []
        if owner is not None:
            where.append("owner=?")
            args.append(owner)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._row(r) for r in self._query(sql + " ORDER BY created DESC", args)]

    def owner_names(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self._query("SELECT owner, name FROM owners")}

    def epochs(self, run_id: str) -> list[dict]:
        rows = self._query("SELECT record FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,))
        return [json.loads(r[0]) for r in rows]

    def count_active(self) -> int:
        return self._query("SELECT COUNT(*) FROM runs WHERE status IN ('queued','running')")[0][0]

    def count_running(self) -> int:
        return self._query("SELECT COUNT(*) FROM runs WHERE status='running'")[0][0]

    def epoch_seconds(
        self, model: str, data_source: str, batch_size: int, train_limit: int = 0, loss_weighting: str = "static"
    ) -> list[float]:
        """Seconds per epoch of this model's most recent epochs on this server, same data, batch size and
        loss weighting (a gradient method costs several times a static run's epoch)."""
        sql = (
            "SELECT json_extract(e.record, '$.seconds') FROM epochs e JOIN runs r ON r.id = e.run_id "
            "WHERE r.model=? AND r.data_source=? AND json_extract(r.config, '$.batch_size')=? "
            "AND json_extract(r.config, '$.train_limit')=? "
            "AND COALESCE(json_extract(r.config, '$.loss_weighting'), 'static')=? "
            "ORDER BY r.created DESC, e.epoch LIMIT 200"
        )
        rows = self._query(sql, (model, data_source, batch_size, train_limit, loss_weighting))
        return [float(r[0]) for r in rows if r[0] is not None]

    def epoch_progress(self, run_ids: list[str]) -> dict[str, tuple[int, float]]:
        """For each run: (epochs done, mean seconds per epoch so far)."""
        if not run_ids:
            return {}
        sql = (
            "SELECT run_id, COUNT(*), AVG(json_extract(record, '$.seconds')) FROM epochs "
            f"WHERE run_id IN ({','.join('?' * len(run_ids))}) GROUP BY run_id"
        )
        return {r[0]: (r[1], r[2] or 0.0) for r in self._query(sql, run_ids)}
