"""The run store: one SQLite database (WAL) with a row per run, a row per epoch record, and the owners.

Every process opens its own connection; the dashboard, the workers and the CLI share the file. Every
status change is guarded by the status (and worker) it expects, so a late writer can never overwrite
a run that another process has already finished, and caps are checked in the same transaction that
inserts, so two quick submits cannot both pass a cap.

Only the server (and the CLI) create or repair the store; a worker only attaches to one. Each store has
an identity (meta 'store_id'), checked on every connection, so a process whose store was deleted, emptied
or replaced gets StoreLost instead of a silently recreated, empty store. A damaged store is moved aside
and every row SQLite can still read goes into the new one (mtl_core/store/salvage.py), with the runs that
workers kept beside their model files when their store failed under them (mtl_core/store/run_link.py).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl_core.settings import env_int
from mtl_core.store import salvage
from mtl_core.text import LABEL_MAX, plain_text

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
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    points TEXT NOT NULL,
    open INTEGER NOT NULL DEFAULT 1
);
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
    # Fair share (JobRunner): when the runner asked this running run to pause for another student's,
    # why, since when its worker holds it paused, and the seconds it has spent paused before.
    "yield_requested": "REAL",
    "pause_reason": "TEXT NOT NULL DEFAULT ''",
    "paused_since": "REAL",
    "paused_seconds": "REAL NOT NULL DEFAULT 0",
    "weights_epoch": "INTEGER",  # the epoch whose weights the model file holds (None: from before this column)
}
# Likewise for the sweeps table. kind "class": the teacher's sweep, a point per student's Start;
# "turn": one student's runs that wait their turn under the per-student cap (RunStore.queue_in_turn).
ADDED_SWEEP_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'class'", "client": "TEXT NOT NULL DEFAULT ''"}
# A running run whose heartbeat is older than this, on a store nobody can write, is shown as interrupted.
SHOWN_STALE_S = 10.0
STORE_EXIT = 3  # a worker's exit status when its store is lost, damaged or unwritable
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
CREATE TRIGGER IF NOT EXISTS bump_run_pause AFTER UPDATE OF yield_requested, paused_since ON runs
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'version'; END;
"""
# Class-wide switches the teacher sets, kept in the meta table as 0/1.
SETTINGS = ("gallery", "gallery_downloads")


class QueueFull(RuntimeError):
    """Too many queued or running jobs; the message says how many and what to do."""


STOPPED_BY_TEACHER = 2  # runs.stop_requested: the teacher pressed Stop on another student's run


class NameTaken(ValueError):
    """Another student of this class already has that display name; the message says so."""


def name_key(name: str) -> str:
    """What two display names are compared by: "ALICE", "alice", "Ａｌｉｃｅ" (full-width) and "Alice  B"
    with two spaces all read as the same name on a teacher's list, so NFKC, case and runs of spaces fold."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


class StoreUnavailable(RuntimeError):
    """The run store cannot be opened or written (read-only or full disk); the message is a sentence."""


class StoreLost(StoreUnavailable):
    """The store this process opened is gone: deleted, emptied, or replaced by another file. Only the
    server makes a new one (`RunStore.recover`); a worker ends its run and keeps it beside its model."""


@dataclass(frozen=True)
class Limits:
    """How many jobs may be queued or running at once: per browser, per client address, on the server."""

    per_owner: int = 4
    per_client: int = 8
    total: int = 32

    @classmethod
    def from_env(cls) -> Limits:
        """MTL_MAX_PER_OWNER / MTL_MAX_PER_CLIENT / MTL_MAX_JOBS; SettingError names a value that is not usable."""

        def env(name: str, default: int) -> int:
            return env_int(name, default, 1, 100_000)

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


def _is_json(text: Any) -> bool:
    try:
        json.loads(text)
    except (TypeError, ValueError):
        return False
    return True


def is_store_failure(exc: BaseException) -> bool:
    """Lost, unwritable or damaged; not a busy moment ("database is locked"), which is only retried."""
    if isinstance(exc, StoreUnavailable):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and (
        not isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc) or "not a database" in str(exc)
    )


def store_problem(exc: BaseException) -> str:
    """A plain sentence for an error that may come from the store: ours (and any other error's message) as
    they are; SQLite's own words are never shown."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return "The run store is busy; try again in a moment."
    return "The run store is damaged (SQLite could not read part of it)."


# What a student sees when the store had to be recovered; the teacher sees `RunStore.notice`.
PUBLIC_NOTICE = "The server had a problem with its run store; your teacher has been told."


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
        why = "the disk reported an error"
    return StoreUnavailable(f"The run store cannot be written ({why}); finished runs can still be viewed.")


PAUSE_REASON = "paused so another student's run could start; it resumes by itself"


@dataclass(frozen=True)
class ShareState:
    """The running runs as the job runner's fair share sees them (RunStore.share_state)."""

    training: int  # running and not asked to pause
    paused: int  # running, asked to pause (or paused already) for another student's run
    waiting: int  # queued runs of students who have nothing running
    holders: frozenset[str]  # the worker tokens that hold a running run


class RunStore:
    def __init__(self, path: str | Path | None = None, repair: bool = True):
        """Open (or create) the store. With `repair` (the server, the CLI), a damaged or truncated file is
        moved aside, every row SQLite can still read goes into a new store, and runs kept beside their
        model files come back. Without (workers), nothing is ever created: a missing or empty store raises
        StoreLost and damage is raised as it is."""
        self.path = Path(path) if path else default_store_path()
        self.models_dir = self.path.parent / "models"
        self.notice = ""  # for the teacher: what happened to the store, what was recovered, where it was kept
        self.public_notice = ""  # for everyone: a plain sentence, or nothing
        self.store_id: int | None = None  # this store's identity (meta 'store_id'): a replaced file has another
        self.unwritable = ""  # the last write's failure (read-only or full disk), "" once a write succeeds
        self.adopted = 0  # runs brought back from the records beside their model files by the last open
        self.repair = repair
        self._recover_lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self.read_only = False
        if not self.repair:
            self._attach()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"The run store's folder {self.path.parent} cannot be created ({exc.strerror or exc})."
            ) from exc
        if self.path.exists() and self.path.stat().st_size == 0:
            self._replace("was empty (0 bytes): truncated, or never written")
            return
        fresh = not self.path.exists()
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                self._open_read_only(exc)
                return
            self._replace("could not be read (it is damaged)")
            return
        if fresh:
            self.adopt_sidecars()  # a store deleted while no server ran: its runs' own records bring them back

    def _attach(self) -> None:
        """A worker's open: the store must exist and be a run store; its identity is remembered."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            raise StoreLost(f"The run store {self.path.name} is missing or empty; only the server creates it.")
        db = sqlite3.connect(self._uri("rw"), uri=True, timeout=30, isolation_level=None)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            self.store_id = self._read_identity(db)
        finally:
            db.close()

    def _uri(self, mode: str) -> str:
        """A URI that never creates the file (`mode=rw` or `ro`)."""
        return f"{self.path.absolute().as_uri()}?mode={mode}"

    def _read_identity(self, db: sqlite3.Connection) -> int | None:
        try:  # one statement: it names both tables, so either one missing fails it
            row = db.execute(
                "SELECT (SELECT value FROM meta WHERE key='store_id'), EXISTS (SELECT 1 FROM runs)"
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc).lower():
                raise StoreLost(
                    f"The run store {self.path.name} is no longer a run store (emptied or replaced)."
                ) from exc
            raise
        return row[0]

    def _check_identity(self, db: sqlite3.Connection) -> None:
        if self._read_identity(db) != self.store_id:
            raise StoreLost(f"The run store {self.path.name} was replaced by another file while it was in use.")

    def follow(self) -> bool:
        """For a process that does not own the store (a second dashboard): after the server that owns it
        renewed it, take the new store as it is. True when this process's store changed."""
        try:
            self.version()
            return False
        except StoreLost:
            pass
        except (StoreUnavailable, sqlite3.DatabaseError):
            return False  # unwritable or damaged: the owning server deals with it; pages say so meanwhile
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False  # not renewed yet
        db = sqlite3.connect(self._uri("ro"), uri=True, timeout=30, isolation_level=None)
        try:
            self.store_id = self._read_identity(db)
        except (StoreLost, sqlite3.DatabaseError):
            return False
        finally:
            db.close()
        self.notice, self.public_notice = "The run store was renewed by the server that trains the runs.", PUBLIC_NOTICE
        return True

    def recover(self) -> str:
        """The server's answer to a store lost or damaged while it runs, the same as a restart: damage
        moved aside and salvaged, a new store, runs kept beside their models adopted. A store replaced by
        another readable one is taken as it is. Returns the teacher's notice ("" when nothing was wrong)."""
        with self._recover_lock:
            try:
                with self._connect() as db:
                    if db.execute("PRAGMA quick_check").fetchone()[0] == "ok":
                        return ""  # nothing wrong (any more): another thread recovered it
            except sqlite3.DatabaseError:
                pass  # damaged: moved aside and salvaged below
            except StoreUnavailable:
                pass  # missing, emptied or replaced
            if not self.path.exists():
                self._open()
                self.notice = "The run store was deleted while the server ran; a new one was started."
                self._say_recovered(None)
            else:
                self.notice = ""
                self._open()
                if not self.notice:
                    self.notice = "The run store was replaced by another file while the server ran; it is used now."
                    self.adopt_sidecars()
                    self._say_recovered(None, say_none=False)
            self.public_notice = PUBLIC_NOTICE
            return self.notice

    def _open_read_only(self, exc: sqlite3.OperationalError) -> None:
        """A disk that is read-only or full: keep what is there viewable, start nothing new."""
        if not self.path.exists():
            raise _unwritable(exc, self.path.parent) from exc
        self.read_only = True
        self.notice = str(_unwritable(exc, self.path.parent)).replace("viewed.", "viewed, but no new run can start.")
        self.public_notice = self.notice  # plain words, no paths: every student needs to know
        try:
            with self._connect() as db:
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
                self.store_id = self._read_identity(db)
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
            for table, added in (("runs", ADDED_COLUMNS), ("sweeps", ADDED_SWEEP_COLUMNS)):
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                for col, decl in added.items():
                    if col not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
            db.executescript(TRIGGERS)
            # The store's identity, made once: a process that then reads another knows its store was replaced.
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", (secrets.randbits(62),))
            self.store_id = self._read_identity(db)
        finally:
            db.close()

    def _replace(self, why: str) -> None:
        """Keep a damaged or empty store for inspection under a new name (never overwritten), start a new
        one, and carry into it every row SQLite can still read and every run kept beside its model."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = self.path.with_name(f"{self.path.name}.damaged-{stamp}"), 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        self._init_schema()
        try:
            salvaged = self._salvage_from(aside) if aside.stat().st_size > 0 else None
        except sqlite3.DatabaseError:
            salvaged = 0  # the new store starts empty rather than not at all; the damaged file is kept
        try:
            self.adopt_sidecars(fill_epochs=True)
        except sqlite3.DatabaseError:
            self.adopted = 0
        self.notice = (
            f"The run store {why}. It was moved aside to {aside.name} (kept in {aside.parent}) "
            "and a new store was started."
        )
        self._say_recovered(salvaged)
        self.public_notice = PUBLIC_NOTICE

    def _say_recovered(self, salvaged: int | None, say_none: bool = True) -> None:
        parts = []
        if salvaged is not None:
            parts.append(f"{salvaged} {'run was' if salvaged == 1 else 'runs were'} recovered from the damaged file")
        if self.adopted:
            n = self.adopted
            were = "run was" if n == 1 else "runs were"
            parts.append(f"{n} {were} brought back from the records kept beside their models")
        if parts or say_none:
            self.notice += (" " + "; ".join(parts) + ".") if parts else " No earlier run could be recovered."

    def _salvage_from(self, damaged: Path) -> int:
        """Every readable row of `damaged` into this (new) store; runs that were queued or running there
        end as interrupted. Returns how many runs came across."""
        rows = salvage.read_rows(damaged)
        runs = salvage.usable_runs(rows["runs"])
        with self._connect(write=True) as db:
            cols = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in ("runs", "epochs", "owners")}
            for r in runs:
                if r.get("status") not in STATUSES or r.get("status") in ACTIVE:
                    r["status"] = "interrupted"
                    r["reason"] = "the run store was damaged while it was queued or training; the curve so far is kept"
                self._insert(db, "runs", {k: v for k, v in r.items() if k in cols["runs"]})
            ids = {r[0] for r in db.execute("SELECT id FROM runs")}  # as inserted: epochs need their run
            for e in rows["epochs"]:
                if e.get("run_id") in ids and isinstance(e.get("epoch"), int) and _is_json(e.get("record")):
                    self._insert(db, "epochs", {k: v for k, v in e.items() if k in cols["epochs"]})
            for o in rows["owners"]:
                if isinstance(o.get("owner"), str) and o.get("seen") is not None:
                    self._insert(db, "owners", {k: v for k, v in o.items() if k in cols["owners"]})
            for m in rows["meta"]:
                if m.get("key") in SETTINGS and isinstance(m.get("value"), int):
                    self._insert(db, "meta", {"key": m["key"], "value": m["value"]})
        return len(ids)

    @staticmethod
    def _insert(db: sqlite3.Connection, table: str, row: dict) -> None:
        row = {k: v for k, v in row.items() if v is not None}  # a column's default rather than a refused row
        names = list(row)
        db.execute(
            f"INSERT OR IGNORE INTO {table} ({','.join(names)}) VALUES ({','.join('?' * len(names))})",
            [row[n] for n in names],
        )

    def adopt_sidecars(self, fill_epochs: bool = False) -> int:
        """Runs kept beside their model files (`salvage.write_sidecar`) that this store lacks come back (a
        run that was still active there as interrupted). With `fill_epochs` (a store just rebuilt from a
        damaged one) a run it has that is over also gets the epochs it lacks. Active runs are never touched."""
        self.adopted = 0
        files = salvage.sidecar_files(self.models_dir)
        if not files:
            return 0
        have = {r[0]: r[1] for r in self._query("SELECT id, status FROM runs")}
        wanted = [p for rid, p in files.items() if rid not in have or (fill_epochs and have[rid] not in ACTIVE)]
        sidecars = salvage.read_sidecars(wanted)  # parsed before the write lock is taken
        if not sidecars:
            return 0
        with self._connect(write=True) as db:
            cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            status = {r[0]: r[1] for r in db.execute("SELECT id, status FROM runs")}
            for side in sidecars:
                run = dict(side["run"])
                rid = run.get("id")
                if not isinstance(rid, str) or status.get(rid) in ACTIVE:
                    continue
                if rid not in status:
                    if isinstance(run.get("config"), dict):
                        run["config"] = json.dumps(run["config"])
                    run["best"] = json.dumps(run["best"]) if isinstance(run.get("best"), dict) and run["best"] else None
                    if run.get("status") not in STATUSES or run.get("status") in ACTIVE:
                        run["status"] = "interrupted"
                        run["reason"] = run.get("reason") or "the run store was lost while it trained; curve kept"
                    run["stop_requested"] = 0
                    if not salvage.usable_runs([run]):
                        continue
                    self._insert(db, "runs", {k: v for k, v in run.items() if k in cols})
                    if db.execute("SELECT 1 FROM runs WHERE id=?", (rid,)).fetchone() is None:
                        continue  # refused (a required field missing): no epochs without their run
                    status[rid] = run["status"]
                    self.adopted += 1
                for e in side["epochs"]:
                    if isinstance(e, dict) and isinstance(e.get("epoch"), int):
                        db.execute(
                            "INSERT OR IGNORE INTO epochs (run_id, epoch, record) VALUES (?,?,?)",
                            (rid, e["epoch"], json.dumps(_json_safe(e))),
                        )
        return self.adopted

    def _query(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        """Rows of a read. On a full disk even a read can fail (WAL recovery wants to write): then the
        store is read without writing anything, so finished runs stay viewable."""
        try:
            with self._connect() as db:
                return db.execute(sql, args).fetchall()
        except StoreLost:
            raise
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
        lost = StoreLost(f"The run store {self.path.name} is gone (deleted or moved) while it was in use.")
        if not self.read_only and not self.path.exists():
            raise lost  # never connect by path then: that would make a new, empty file
        try:
            if self.read_only:
                db = self._connect_read_only()
            else:
                db = sqlite3.connect(self._uri("rw"), uri=True, timeout=30, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise (lost if not self.path.exists() else _unwritable(exc, self.path.parent)) from exc
        db.row_factory = sqlite3.Row
        try:
            if not self.read_only:
                self._check_identity(db)  # emptied or replaced under us: StoreLost, never a silent new schema
            if write:  # both pragmas only act on writes; a read skips them (each call costs a busy server)
                db.execute("PRAGMA foreign_keys=ON")
                # WAL with NORMAL sync: commits stay atomic and survive a crashed process; only a power cut
                # can lose the last ones. FULL would fsync every heartbeat and epoch.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise
            if db.in_transaction:
                db.commit()
            if write:
                self.unwritable = ""
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower() or "no such" in str(exc).lower():
                raise
            err = _unwritable(exc, self.path.parent)
            if write:
                self.unwritable = str(err)  # pages show a running run of a store nobody can write as interrupted
            raise err from exc
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
        labels = [plain_text(label, LABEL_MAX) for label in labels or [""] * len(configs)]  # stored as shown
        ids = [self._new_run_id() for _ in configs]
        with self._connect(write=True) as db:
            if limits is not None:
                self._check_caps(db, len(configs), owner, client, limits)
            self._insert_runs(db, ids, configs, owner, labels, client)
        return ids

    @staticmethod
    def _new_run_id() -> str:
        """When it was queued, to the second, and six random hex digits: sortable and unique."""
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]

    @staticmethod
    def _insert_runs(
        db: sqlite3.Connection, ids: list[str], configs: list[dict], owner: str, labels: list[str], client: str
    ) -> None:
        now = time.time()
        for run_id, config, label in zip(ids, configs, labels):
            db.execute(
                "INSERT INTO runs (id, owner, label, model, config, status, created, client) VALUES (?,?,?,?,?,?,?,?)",
                (run_id, owner, label, config["model"], json.dumps(config), "queued", now, client),
            )

    # -- a class's sweep: the teacher opens it, each student's Start trains its next point ---------------

    def open_sweep(self, sweep_id: str, points: list[tuple[str, dict]], owner: str = "") -> None:
        """Offer `points` ((label, config) each) to the class, one per Start, until every one has a run."""
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO sweeps (id, owner, created, points) VALUES (?,?,?,?)",
                (sweep_id, owner, time.time(), json.dumps([[plain_text(label, LABEL_MAX), c] for label, c in points])),
            )

    def close_sweep(self, sweep_id: str) -> None:
        with self._connect(write=True) as db:
            db.execute("UPDATE sweeps SET open=0 WHERE id=?", (sweep_id,))

    def open_sweeps(self) -> list[dict]:
        """The class sweeps still open, newest first: id, created, points and how many of them have a run."""
        out = []
        for sweep_id, created, points in self._query(
            "SELECT id, created, points FROM sweeps WHERE open=1 AND kind='class' ORDER BY created DESC"
        ):
            points = [tuple(p) for p in json.loads(points)]
            taken = self._taken_labels([label for label, _ in points])
            out.append({"id": sweep_id, "created": created, "points": points, "taken": len(taken)})
        return out

    def _taken_labels(self, labels: list[str], db: sqlite3.Connection | None = None) -> set[str]:
        """The points that have a run that is waiting, training or done (a failed or stopped one is offered
        again)."""
        sql = "SELECT label FROM runs WHERE status IN ('queued','running','finished') AND label IN ({})"
        sql = sql.format(",".join("?" * len(labels)))
        rows = db.execute(sql, labels).fetchall() if db is not None else self._query(sql, labels)
        return {r[0] for r in rows}

    def claim_sweep_point(
        self, sweep_id: str, owner: str, client: str = "", limits: Limits | None = None
    ) -> str | None:
        """Queue the sweep's next point without a run as `owner`'s run: its id, or None when every point has
        one. One transaction: two students pressing Start at once get two different points."""
        with self._connect(write=True) as db:
            row = db.execute("SELECT points FROM sweeps WHERE id=? AND open=1 AND kind='class'", (sweep_id,)).fetchone()
            if row is None:
                return None
            points = [tuple(p) for p in json.loads(row[0])]
            taken = self._taken_labels([label for label, _ in points], db)
            free = [(label, config) for label, config in points if label not in taken]
            if not free:
                return None
            if limits is not None:
                self._check_caps(db, 1, owner, client, limits)
            label, config = free[0]
            run_id = self._new_run_id()
            self._insert_runs(db, [run_id], [config], owner, [label], client)
        return run_id

    # -- runs that wait their turn: more than one student's cap at once (a table, a sweep) ---------------

    def queue_in_turn(
        self, points: list[tuple[str, dict]], owner: str = "", client: str = "", limits: Limits | None = None
    ) -> tuple[str, list[str]]:
        """Queue `points` ((label, config) each) as `owner`'s runs, as many now as the caps allow; the rest
        wait here, and `top_up` queues them as the owner's runs end (the runner calls it every second).
        Returns the waiting list's id and the runs queued now."""
        turn_id = "turn-" + uuid.uuid4().hex[:10]
        rows = json.dumps([[plain_text(label, LABEL_MAX), c, None] for label, c in points])
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO sweeps (id, owner, created, points, kind, client) VALUES (?,?,?,?,'turn',?)",
                (turn_id, owner, time.time(), rows, client),
            )
        return turn_id, self.top_up(limits, turn_id)

    def top_up(self, limits: Limits | None = None, only: str | None = None) -> list[str]:
        """Queue waiting runs (oldest list first) while their owner's and the server's caps have room; a list
        whose every run is queued closes. The runs queued. One transaction: two servers never queue a point
        twice."""
        queued: list[str] = []
        if not self._query("SELECT 1 FROM sweeps WHERE open=1 AND kind='turn' LIMIT 1"):
            return queued  # the usual case, every second: no write lock taken
        sql = "SELECT id, owner, client, points FROM sweeps WHERE open=1 AND kind='turn'"
        args: tuple = ()
        if only:
            sql, args = sql + " AND id=?", (only,)
        with self._connect(write=True) as db:
            for turn_id, owner, client, raw in db.execute(sql + " ORDER BY created", args).fetchall():
                points = json.loads(raw)
                for point in points:
                    if point[2] is not None:
                        continue
                    if limits is not None:
                        try:
                            self._check_caps(db, 1, owner, client, limits)
                        except QueueFull:
                            break
                    point[2] = self._new_run_id()
                    self._insert_runs(db, [point[2]], [point[1]], owner, [point[0]], client)
                    queued.append(point[2])
                still = any(p[2] is None for p in points)
                db.execute("UPDATE sweeps SET points=?, open=? WHERE id=?", (json.dumps(points), int(still), turn_id))
        return queued

    def waiting_turns(self, owner: str | None = None) -> list[dict]:
        """Open waiting lists (of `owner`, or everyone's), oldest first, as `turn` gives each."""
        sql = "SELECT id, owner, created, points, open FROM sweeps WHERE open=1 AND kind='turn'"
        rows = self._query(sql + (" AND owner=?" if owner is not None else "") + " ORDER BY created",
                           (owner,) if owner is not None else ())  # fmt: skip
        return [self._turn(row) for row in rows]

    def turn(self, turn_id: str) -> dict | None:
        """A waiting list: id, owner, created, open, the labels still waiting, and the runs queued so far."""
        rows = self._query("SELECT id, owner, created, points, open FROM sweeps WHERE id=? AND kind='turn'", (turn_id,))
        return self._turn(rows[0]) if rows else None

    @staticmethod
    def _turn(row: sqlite3.Row) -> dict:
        turn_id, owner, created, raw, still = row
        points = json.loads(raw)
        return {
            "id": turn_id, "owner": owner, "created": created, "open": bool(still),
            "waiting": [p[0] for p in points if p[2] is None], "runs": [p[2] for p in points if p[2]],
        }  # fmt: skip

    def cancel_turn(self, turn_id: str) -> None:
        """Drop the runs of a waiting list that are not queued yet (its queued runs stay)."""
        with self._connect(write=True) as db:
            db.execute("UPDATE sweeps SET open=0 WHERE id=? AND kind='turn'", (turn_id,))

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

    def claim_next(self, worker: str, pid: int | None = None, slots: int | None = None) -> str | None:
        """Atomically take the next queued run for a worker; None when the queue is empty, or when
        `slots` (the pool's size) runs already train (paused runs do not count; see `request_yield`).

        Fair across owners (round robin): the owner with the fewest running jobs goes first (a paused
        run counts as running, so the slot it gave up goes to someone else), then the owner who last had
        a job started longest ago, then the oldest run."""
        now = time.time()
        with self._connect(write=True) as db:
            row = db.execute(
                "UPDATE runs SET status='running', started=?, worker=?, worker_pid=?, heartbeat=? WHERE id=("
                " SELECT q.id FROM runs q WHERE q.status='queued' AND q.stop_requested=0 ORDER BY"
                "  (SELECT COUNT(*) FROM runs r WHERE r.owner=q.owner AND r.status='running'),"
                "  (SELECT COALESCE(MAX(r.started), 0) FROM runs r WHERE r.owner=q.owner AND r.id<>q.id),"
                "  q.created, q.id LIMIT 1"
                ") AND status='queued' AND (? IS NULL OR ? > ("
                " SELECT COUNT(*) FROM runs t WHERE t.status='running' AND t.yield_requested IS NULL"
                ")) RETURNING id",
                (now, worker, pid, now, slots, slots),
            ).fetchone()
        return row[0] if row else None

    # -- fair share: a long run pauses in place so that another student's run can start ------------
    # The JobRunner asks (request_yield), the run's worker holds it paused at its next stop check
    # (set_paused), and the runner lets it go on (resume_paused) once nobody waits. A paused run keeps
    # status 'running', its worker and its heartbeat; only `yield_requested` tells it apart.

    # A queued run whose student has nothing running (a paused run counts as running): one that waits.
    _WAITING = (
        "SELECT COUNT(*) FROM runs q WHERE q.status='queued' AND q.stop_requested=0 "
        "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.owner=q.owner AND r.status='running')"
    )

    def share_state(self) -> ShareState:
        """What the runner's fair-share round needs, read in one transaction."""
        with self._connect() as db:
            rows = db.execute("SELECT worker, yield_requested FROM runs WHERE status='running'").fetchall()
            waiting = db.execute(self._WAITING).fetchone()[0]
        paused = sum(r[1] is not None for r in rows)
        return ShareState(len(rows) - paused, paused, waiting, frozenset(r[0] for r in rows if r[0]))

    def request_yield(self, min_run_s: float, max_paused: int, reason: str = PAUSE_REASON) -> str | None:
        """Ask one running run to pause so that a waiting student's run can start; its id, or None when
        nobody waits, `max_paused` runs are paused already, or no run qualifies. The run chosen: one of
        the student with the most running jobs (paused ones included), the one that has trained longest,
        and only one that has trained `min_run_s` already (a short run is never paused)."""
        now = time.time()
        with self._connect(write=True) as db:
            paused = db.execute(
                "SELECT COUNT(*) FROM runs WHERE status='running' AND yield_requested IS NOT NULL"
            ).fetchone()[0]
            if paused >= max_paused or db.execute(self._WAITING).fetchone()[0] == 0:
                return None
            row = db.execute(
                "UPDATE runs SET yield_requested=?, pause_reason=? WHERE id=("
                " SELECT v.id FROM runs v WHERE v.status='running' AND v.yield_requested IS NULL"
                "  AND v.stop_requested=0 AND ? - v.started - v.paused_seconds >= ? ORDER BY"
                "  (SELECT COUNT(*) FROM runs r WHERE r.owner=v.owner AND r.status='running') DESC,"
                "  v.started + v.paused_seconds, v.id LIMIT 1"
                ") RETURNING id",
                (now, reason, now, min_run_s),
            ).fetchone()
        return row[0] if row else None

    def resume_paused(self, slots: int) -> list[str]:
        """Let paused runs go on, the longest paused first, while fewer than `slots` runs train."""
        with self._connect(write=True) as db:
            training = db.execute(
                "SELECT COUNT(*) FROM runs WHERE status='running' AND yield_requested IS NULL"
            ).fetchone()[0]
            if training >= slots:
                return []
            rows = db.execute(
                "UPDATE runs SET yield_requested=NULL, pause_reason='' WHERE id IN ("
                " SELECT id FROM runs WHERE status='running' AND yield_requested IS NOT NULL"
                " ORDER BY yield_requested, id LIMIT ?"
                ") RETURNING id",
                (slots - training,),
            ).fetchall()
        return [r[0] for r in rows]

    def yield_requested(self, run_id: str) -> bool:
        """Whether the runner asks this run to stay paused (its worker polls this at every stop check)."""
        rows = self._query("SELECT yield_requested FROM runs WHERE id=? AND status='running'", (run_id,))
        return bool(rows and rows[0][0] is not None)

    def set_paused(self, run_id: str, worker: str, paused: bool) -> bool:
        """The worker holds the run paused (True) or goes on training it (False, the pause added up)."""
        if paused:
            return self._guarded("UPDATE runs SET paused_since=?", (time.time(),), run_id, worker)
        return self._guarded(
            "UPDATE runs SET paused_seconds=paused_seconds + MAX(0, ? - COALESCE(paused_since, ?)), paused_since=NULL",
            (time.time(), time.time()),
            run_id,
            worker,
        )

    def count_training(self) -> int:
        """Running runs that train now (not paused for another student's)."""
        return self._query("SELECT COUNT(*) FROM runs WHERE status='running' AND yield_requested IS NULL")[0][0]

    def _guarded(self, sql: str, args: tuple, run_id: str, worker: str) -> bool:
        """Run an UPDATE that applies only while `worker` still holds the running run."""
        with self._connect(write=True) as db:
            cur = db.execute(sql + " WHERE id=? AND status='running' AND worker=?", (*args, run_id, worker))
            return cur.rowcount > 0

    def check_writable(self) -> None:
        """Raise what would keep a worker from writing this store now: StoreLost, StoreUnavailable (read-only,
        full disk) or SQLite's damage. The server asks before it starts workers."""
        with self._connect(write=True) as db:
            db.execute("UPDATE meta SET value=value WHERE key='version'")

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
        """Record that the best weights so far are on disk (only after they were written: `weights_epoch`
        is the epoch the file holds), so an interrupted run keeps them."""
        return self._guarded(
            "UPDATE runs SET best_epoch=?, weights_path=?, weights_epoch=?",
            (best_epoch, weights_path, best_epoch),
            run_id,
            worker,
        )

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

    def request_stop(self, run_id: str, by_teacher: bool = False) -> None:
        """Ask a run to stop: a queued run is cancelled at once, a running one at its next batch.
        `by_teacher`: the teacher stopped another student's run (stop_requested 2, STOPPED_BY_TEACHER),
        so that student's page can say who did."""
        flag = STOPPED_BY_TEACHER if by_teacher else 1
        with self._connect(write=True) as db:
            db.execute("UPDATE runs SET stop_requested=? WHERE id=? AND status IN ('queued','running')", (flag, run_id))
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
        salvage.sidecar_path(self.models_dir, run_id).unlink(missing_ok=True)  # or a restart would bring it back

    def interrupt_worker(self, worker: str, reason: str) -> list[str]:
        """A worker that is known to be gone: its running run ends as interrupted (curve and best kept)."""
        with self._connect(write=True) as db:
            rows = db.execute(
                "UPDATE runs SET status='interrupted', reason=?, finished=? WHERE status='running' AND worker=? "
                "RETURNING id",
                (reason, time.time(), worker),
            ).fetchall()
        return [r[0] for r in rows]

    def interrupt_stale(
        self, max_age_s: float, reason: str = "", alive: frozenset[str] = frozenset(), alive_age_s: float = 0.0
    ) -> list[str]:
        """Running runs whose worker has not written a heartbeat for `max_age_s` end as interrupted. A run
        held by a worker in `alive` (its process is known to be running) is given `alive_age_s` instead: on
        a machine loaded to its limit a low-priority worker's heartbeat can be late without anything wrong,
        and interrupting its run then would lose it."""
        now = time.time()
        marks = ",".join("?" * len(alive))
        patient = f" AND (worker NOT IN ({marks}) OR COALESCE(heartbeat, started, 0) < ?)" if alive else ""
        with self._connect(write=True) as db:
            rows = db.execute(
                "UPDATE runs SET status='interrupted', reason=?, finished=? "
                f"WHERE status='running' AND COALESCE(heartbeat, started, 0) < ?{patient} RETURNING id",
                (
                    reason or f"its worker stopped answering (no heartbeat for {max_age_s:.0f} s)",
                    now,
                    now - max_age_s,
                    *((*sorted(alive), now - max(alive_age_s, max_age_s)) if alive else ()),
                ),
            ).fetchall()
        return [r[0] for r in rows]

    def cancel_abandoned(self, max_age_s: float) -> list[str]:
        """Queued runs of browsers not seen for `max_age_s` are cancelled, and their runs still waiting their
        turn dropped, so a closed tab does not hold the queue. Owners never seen by the dashboard (the CLI)
        are left alone."""
        gone = "SELECT owner FROM owners WHERE seen < ?"
        now = time.time()
        with self._connect(write=True) as db:
            db.execute(f"UPDATE sweeps SET open=0 WHERE kind='turn' AND open=1 AND owner IN ({gone})",
                       (now - max_age_s,))  # fmt: skip
            rows = db.execute(
                "UPDATE runs SET status='cancelled', reason='its browser tab was closed before it started', "
                f"finished=? WHERE status='queued' AND owner IN ({gone}) RETURNING id",
                (now, now - max_age_s),
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

    def set_owner_name(self, owner: str, name: str) -> None:
        """Give `owner` a display name; NameTaken if another owner has one that reads the same (see
        `name_key`). An empty name clears it. The check and the write are one transaction."""
        with self._connect(write=True) as db:
            if name:
                folded = name_key(name)
                for (other,) in db.execute("SELECT name FROM owners WHERE owner<>? AND name<>''", (owner,)):
                    if name_key(other) == folded:
                        raise NameTaken("Someone in this class already has that name: add an initial or pick another.")
            db.execute(
                "INSERT INTO owners (owner, name, seen) VALUES (?, ?, ?) "
                "ON CONFLICT(owner) DO UPDATE SET seen=excluded.seen, name=excluded.name",
                (owner, name, time.time()),
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

    def _row(self, row: sqlite3.Row) -> dict:
        d = dict(row)
        d["config"] = json.loads(d["config"])
        d["best"] = json.loads(d["best"]) if d["best"] else {}
        if (
            d["status"] == "running"
            and (self.read_only or self.unwritable)
            and (d.get("heartbeat") or d.get("started") or 0) < time.time() - SHOWN_STALE_S
        ):
            # Its worker could not write and has stopped; nobody can record that, so it is shown here.
            d["status"], d["reason"] = "interrupted", "interrupted (the store cannot be written)"
        return d

    def version(self) -> int:
        """A counter that grows with every change a page would show (not with heartbeats)."""
        return self._query("SELECT value FROM meta WHERE key='version'")[0][0]

    # Every run comes with its student's display name (empty when none was given).
    _SELECT = "SELECT runs.*, COALESCE(owners.name, '') AS student FROM runs LEFT JOIN owners USING (owner)"

    def overview(self) -> tuple[tuple, ...]:
        """What the class's run lists and counters show of every run, in one small query: id, status,
        label, Stop and pause flags, and the student's name (no configs, no curves). Equal overviews draw
        the same lists, so a live page redraws only when this changes."""
        rows = self._query(
            "SELECT runs.id, runs.status, runs.label, runs.stop_requested, runs.yield_requested,"
            " COALESCE(owners.name, '') FROM runs LEFT JOIN owners USING (owner) ORDER BY runs.id"
        )
        return tuple(tuple(r) for r in rows)

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
        runs = [self._row(r) for r in self._query(sql + " ORDER BY created DESC", args)]
        return [r for r in runs if not statuses or r["status"] in statuses]  # as shown (see `_row`)

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
