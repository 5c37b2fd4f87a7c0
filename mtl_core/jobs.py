"""The job runner: a bounded queue of training runs (kept in the run store) and worker processes.

The dashboard submits, watches, stops and lists runs through this; training itself happens in
`mtl_core.worker` processes, so no click, page switch or closed tab can kill or duplicate a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from .config import TrainConfig
from .runs import RunStore

MAX_ACTIVE_TOTAL = 32
MAX_ACTIVE_PER_OWNER = 4


class QueueFull(RuntimeError):
    """Too many queued or running jobs; the message says how many and what to do."""


class JobRunner:
    def __init__(
        self,
        store: RunStore,
        workers: int = 1,
        max_active: int = MAX_ACTIVE_TOTAL,
        max_per_owner: int = MAX_ACTIVE_PER_OWNER,
    ):
        if workers < 1:
            raise ValueError("a job runner needs at least one worker")
        self.store = store
        self.n_workers = workers
        self.max_active, self.max_per_owner = max_active, max_per_owner
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self.ensure_workers()

    def ensure_workers(self) -> None:
        """Start (or restart) worker processes up to the configured number."""
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            root = str(Path(__file__).resolve().parent.parent)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            while len(self._procs) < self.n_workers:
                cmd = [
                    sys.executable,
                    "-m",
                    "mtl_core.worker",
                    "--db",
                    str(self.store.path),
                    "--parent",
                    str(os.getpid()),
                ]
                # A session of its own: Ctrl+C on the server must not kill a job mid-epoch.
                self._procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True))
            # A worker that died (killed, out of memory) leaves its run "running": fail it, free the slot.
            self.store.fail_orphans(alive_pids={p.pid for p in self._procs})

    def _active_counts(self, owner: str) -> tuple[int, int]:
        """(this owner's queued or running jobs, everyone's)."""
        active = self.store.list_runs(statuses=("queued", "running"))
        return sum(r["owner"] == owner for r in active), len(active)

    def free_slots(self, owner: str = "") -> int:
        """How many more jobs this owner may queue right now."""
        mine, total = self._active_counts(owner)
        return max(0, min(self.max_per_owner - mine, self.max_active - total))

    def submit(self, config: TrainConfig, owner: str = "", label: str = "") -> str:
        """Queue a run; raises QueueFull when the server or this owner has too many active jobs."""
        mine, total = self._active_counts(owner)
        if mine >= self.max_per_owner:
            raise QueueFull(
                f"you already have {mine} jobs queued or running (limit {self.max_per_owner}); "
                "wait for one to finish or stop one"
            )
        if total >= self.max_active:
            raise QueueFull(f"the server's job queue is full ({total} jobs); try again in a minute")
        run_id = self.store.create_run(config.to_dict(), owner=owner, label=label)
        self.ensure_workers()
        return run_id

    def stop(self, run_id: str) -> None:
        self.store.request_stop(run_id)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.poll() is None]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers now (a running job is marked failed on the next start)."""
        with self._lock:
            for p in self._procs:
                p.terminate()
            for p in self._procs:
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
            self._procs = []
