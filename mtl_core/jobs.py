"""The job runner: a bounded, fair queue of training runs (kept in the run store) and what trains them:
worker processes on this machine (the default) or tasks on a Ray cluster (MTL_EXECUTOR=ray, see
mtl_core/ray_backend.py). The pages, the store and the CLI are the same for both.

The dashboard submits, watches, stops and lists runs through this; training happens in
`mtl_core.worker` processes, so no click, page switch or closed tab can kill or duplicate a run.
A supervisor thread replaces dead workers (backing off when they die at once, so a broken disk
cannot start a crash loop), ends runs whose heartbeat went stale, and cancels queued runs of
browsers long gone. One pool per run store: a lock file keeps a second server from starting another.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .runs import Limits, QueueFull, RunStore, default_store_path

__all__ = [
    "EXECUTORS",
    "JobRunner",
    "QueueFull",
    "Limits",
    "RunnerSettings",
    "server_runner",
    "shutdown_server_runners",
]

SUPERVISE_S = 1.0
STALE_S = 10.0  # a running run without a heartbeat for this long is interrupted
QUICK_EXIT_S = 5.0  # a worker that dies this soon after starting counts towards the back-off
MAX_BACKOFF_S = 60.0
EXECUTORS = ("local", "ray")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class RunnerSettings:
    """How a server trains: workers and threads per worker, the per-job time cap, the grace period for
    closed tabs. `from_env()` reads the MTL_* variables the README lists."""

    workers: int = 1
    threads: int = 1
    max_threads: int = 0  # a run alone on the machine may take this many threads (0: `threads`)
    max_job_s: float = 0.0  # 0: no limit
    abandon_s: float = 0.0  # 0: queued runs of a closed tab wait forever
    nice: int = 0  # added to the workers' scheduling niceness: clicks on the pages come before training
    limits: Limits = field(default_factory=Limits)
    executor: str = "local"  # "local": worker processes here; "ray": tasks on a Ray cluster (ray_backend.py)
    ray_address: str = ""  # "" starts a local Ray instance; "auto" or host:port joins a running cluster

    @classmethod
    def from_env(cls) -> RunnerSettings:
        cores = os.cpu_count() or 1
        workers = max(1, int(_env_float("MTL_WORKERS", cores)))
        threads = max(1, int(_env_float("MTL_THREADS", max(1, cores // workers))))
        return cls(
            workers=workers,
            threads=threads,
            # A lone run takes every core (mtl_core/worker.threads_for); MTL_THREADS pins them instead.
            max_threads=int(_env_float("MTL_MAX_THREADS", threads if "MTL_THREADS" in os.environ else cores)),
            max_job_s=_env_float("MTL_MAX_JOB_MINUTES", 30) * 60,
            abandon_s=_env_float("MTL_ABANDON_MINUTES", 10) * 60,
            nice=int(_env_float("MTL_WORKER_NICE", 10)),
            limits=Limits.from_env(),
            executor=os.environ.get("MTL_EXECUTOR", "local").strip().lower() or "local",
            ray_address=os.environ.get("MTL_RAY_ADDRESS", "").strip(),
        )


class _Worker:
    def __init__(self, proc: subprocess.Popen, token: str):
        self.proc, self.token, self.started = proc, token, time.monotonic()
        self.ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True, name=f"worker-{token[:6]}").start()

    def _read_stdout(self) -> None:
        """The worker prints "ready" once its imports and data are loaded; nothing else comes here."""
        try:
            for line in self.proc.stdout:
                if line.strip() == b"ready":
                    self.ready.set()
        except (OSError, ValueError):
            pass  # the pipe was closed: the worker is gone


class JobRunner:
    def __init__(self, store: RunStore, settings: RunnerSettings | None = None):
        settings = settings or RunnerSettings()
        if settings.workers < 1:
            raise ValueError("a job runner needs at least one worker")
        if settings.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {settings.executor!r}: choose one of {', '.join(EXECUTORS)}")
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        self.problem = ""  # a sentence for the dashboard when workers cannot be kept running
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._quick_exits = 0
        self._next_spawn = 0.0
        # A read-only store (read-only or full disk) trains nothing: no workers, so no crash loop.
        self._pool_lock = None if store.read_only else self._acquire_pool_lock()
        self.has_pool = self._pool_lock is not None
        self._ray = None  # the Ray backend's pool, when MTL_EXECUTOR=ray
        if self.has_pool:
            # Runs left "running" by a previous server (killed, restarted) end as interrupted now.
            self.store.interrupt_stale(0.0, "the server restarted while it was training; the curve so far is kept")
            if settings.executor == "ray":
                try:
                    from .ray_backend import RayPool

                    self._ray = RayPool(store, settings.threads, settings.max_job_s, settings.ray_address)
                except Exception as exc:  # noqa: BLE001 - no cluster: the pages still open and say why
                    self.problem = (
                        f"Training on Ray could not start ({type(exc).__name__}: {exc}); queued runs wait. "
                        "Check MTL_RAY_ADDRESS, or unset MTL_EXECUTOR to train on this machine."
                    )
        self.supervise_once()
        threading.Thread(target=self._supervise_loop, daemon=True, name="job-supervisor").start()

    @property
    def n_workers(self) -> int:
        """How many runs train at once: the local workers, or the runs the Ray cluster has CPUs for."""
        if self.settings.executor == "ray":
            return self._ray.capacity if self._ray is not None else 0
        return self.settings.workers

    # -- the pool ------------------------------------------------------------------------------

    def _acquire_pool_lock(self):
        """An exclusive lock beside the store, held for the life of this runner; the OS drops it when
        the process dies, so a restarted server gets it back and never runs two pools."""
        try:
            f = open(str(self.store.path) + ".pool.lock", "a+")  # noqa: SIM115 - held open on purpose
        except OSError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        return f

    def _spawn(self) -> _Worker:
        token = uuid.uuid4().hex
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "mtl_core.worker", "--db", str(self.store.path), "--token", token]
        cmd += ["--watch-stdin", "--threads", str(self.settings.threads)]
        cmd += ["--max-threads", str(self.settings.max_threads)]
        cmd += ["--max-seconds", str(self.settings.max_job_s), "--nice", str(self.settings.nice)]
        # stdin is a pipe we never write: when this process dies, however it dies, the worker sees EOF.
        # A session of its own: Ctrl+C on the server reaches the worker only through that pipe.
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        return _Worker(proc, token)

    def ensure_workers(self) -> None:
        """Replace dead workers (ending the run each one held) up to the configured number."""
        if not self.has_pool or self._closed.is_set():
            return
        if self.settings.executor == "ray":
            if self._ray is not None:
                self.problem = self._ray.problem  # the Ray pool claims and supervises its own tasks
            return
        with self._lock:
            alive = []
            for w in self._workers:
                code = w.proc.poll()
                if code is None:
                    alive.append(w)
                    continue
                if w.proc.stdin:
                    w.proc.stdin.close()
                try:
                    self.store.interrupt_worker(
                        w.token, f"its worker process died (exit code {code}); the curve so far is kept"
                    )
                except Exception as exc:  # noqa: BLE001 - a damaged store must not stop the back-off below
                    self.problem = f"The run store cannot be read or written ({exc}); training is paused."
                if time.monotonic() - w.started < QUICK_EXIT_S:
                    self._quick_exits += 1
                    backoff = min(MAX_BACKOFF_S, 2.0**self._quick_exits)
                    self._next_spawn = time.monotonic() + backoff
                    self.problem = (
                        f"Training workers exit right after starting (exit code {code}); retrying in {backoff:.0f} s. "
                        "The server log says why."
                    ) + (f" {self.problem}" if self.problem.startswith("The run store") else "")
                else:
                    self._quick_exits = 0
            self._workers = alive
            if time.monotonic() < self._next_spawn:
                return
            if self._workers and self._quick_exits == 0:
                self.problem = ""
            while len(self._workers) < self.n_workers:
                self._workers.append(self._spawn())

    def supervise_once(self) -> None:
        """One round of supervision; the supervisor thread calls this every second."""
        if not self.has_pool:
            return
        self.ensure_workers()
        self.store.interrupt_stale(STALE_S)
        if self.settings.abandon_s > 0:
            self.store.cancel_abandoned(self.settings.abandon_s)
        if self._quick_exits and all(time.monotonic() - w.started > QUICK_EXIT_S for w in self._workers):
            self._quick_exits, self.problem = 0, ""

    def _supervise_loop(self) -> None:
        while not self._closed.wait(SUPERVISE_S):
            try:
                self.supervise_once()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive a bad moment of the store
                if not self.problem:
                    self.problem = f"The job supervisor hit a problem and will retry: {exc}"

    # -- jobs ----------------------------------------------------------------------------------

    def submit(self, config: TrainConfig, owner: str = "", label: str = "", client: str = "") -> str:
        """Queue a run; raises QueueFull when the server, this owner or this client has too many active jobs."""
        return self.submit_many([config], owner, [label], client)[0]

    def submit_many(
        self, configs: list[TrainConfig], owner: str = "", labels: list[str] | None = None, client: str = ""
    ) -> list[str]:
        """Queue all of them or none (the caps are checked in the same transaction)."""
        ids = self.store.create_runs([c.to_dict() for c in configs], owner, labels, client, self.limits)
        self.ensure_workers()
        return ids

    def stop(self, run_id: str) -> None:
        self.store.request_stop(run_id)

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Block until every worker has loaded torch and the default data (benchmarks, tests)."""
        if self._ray is not None:
            return True  # the pool answered when it started; Ray starts its workers on demand
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                workers = list(self._workers)
            if len(workers) == self.n_workers and all(w.ready.is_set() for w in workers):
                return True
            time.sleep(0.05)
        return False

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.poll() is None]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the supervisor and the workers now; a running job ends as interrupted, its curve kept."""
        self._closed.set()
        if self._ray is not None:
            self._ray.shutdown(timeout)
            self._ray = None
        with self._lock:
            for w in self._workers:
                w.proc.terminate()
            for w in self._workers:
                try:
                    w.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                self.store.interrupt_worker(w.token, "the server shut the worker down")
                if w.proc.stdin:
                    w.proc.stdin.close()
            self._workers = []
        if self._pool_lock is not None:
            self._pool_lock.close()
            self._pool_lock = None


# -- one runner per server process, independent of Streamlit's caches --------------------------

_server_lock = threading.Lock()
_server_runners: dict[str, JobRunner] = {}


def server_runner(store_path: str | Path | None = None) -> JobRunner:
    """This process's runner for a store (started on first call, then the same object every time).
    The dashboard's launcher calls it before the first page is served."""
    path = str(Path(store_path or default_store_path()).resolve())
    with _server_lock:
        runner = _server_runners.get(path)
        if runner is None:
            runner = _server_runners[path] = JobRunner(RunStore(path), settings=RunnerSettings.from_env())
        return runner


def shutdown_server_runners() -> None:
    with _server_lock:
        runners = list(_server_runners.values())
        _server_runners.clear()
    for r in runners:
        r.shutdown()


atexit.register(shutdown_server_runners)
