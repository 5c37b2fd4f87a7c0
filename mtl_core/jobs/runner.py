"""The job runner: a bounded, fair queue of training runs (kept in the run store) and what trains them:
worker processes on this machine (the default) or tasks on a Ray cluster (MTL_EXECUTOR=ray, see
mtl_core/jobs/ray_backend.py). The pages, the store and the CLI are the same for both.

The dashboard submits, watches, stops and lists runs through this; training happens in
`mtl_core.jobs.worker` processes, so no click, page switch or closed tab can kill or duplicate a run.
A supervisor thread replaces dead workers (backing off when they die at once, so a broken disk
cannot start a crash loop), ends runs whose heartbeat went stale, and cancels queued runs of
browsers long gone. One pool per run store: a lock file keeps a second server from starting another.
Before it starts a worker it checks that the store can be written: a read-only or full disk pauses
training (`problem` says why), and a store lost or damaged under the server is renewed as a restart
would renew it (`RunStore.recover`).
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

from mtl_core.config import TrainConfig
from mtl_core.settings import IDLE_CLASS, SettingError, env_choice, env_float, env_int
from mtl_core.store.runs import (
    STORE_EXIT,
    Limits,
    QueueFull,
    RunStore,
    StoreLost,
    StoreUnavailable,
    default_store_path,
    is_store_failure,
)

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
STALE_ALIVE_S = 120.0  # ... unless its worker's process still runs: then only after this long
MAX_BACKOFF_S = 60.0
# Back-off counts worker deaths in a row and starts over only once a worker has lived this long: a
# worker that dies a little later each time (after loading torch and the data) is still a crash loop.
HEALTHY_S = 30.0
EXECUTORS = ("local", "ray")


def _env_float(name: str, default: float) -> float:
    """A number of at least 0 from the environment; SettingError (with the variable's name) otherwise."""
    return env_float(name, default, 0.0)


@dataclass(frozen=True)
class RunnerSettings:
    """How a server trains: workers and threads per worker, the per-job time cap, the grace period for
    closed tabs. `from_env()` reads the MTL_* variables the README lists."""

    workers: int = 1
    threads: int = 1
    max_threads: int = 0  # a run alone on the machine may take this many threads (0: `threads`)
    max_job_s: float = 0.0  # 0: no limit
    abandon_s: float = 0.0  # 0: queued runs of a closed tab wait forever
    nice: int = 0  # added to the workers' niceness (IDLE_CLASS: the idle class): clicks come before training
    limits: Limits = field(default_factory=Limits)
    executor: str = "local"  # "local": worker processes here; "ray": tasks on a Ray cluster (ray_backend.py)
    ray_address: str = ""  # "" starts a local Ray instance; "auto" or host:port joins a running cluster
    # Fair share (local pool): a run that has trained this long may be paused in place for a student
    # whose run waits while every worker trains (`JobRunner.share_workers`); a shorter run never is.
    yield_after_s: float = 20.0

    @classmethod
    def from_env(cls) -> RunnerSettings:
        """Every setting checked before anything starts: SettingError names the first one not usable."""
        cores = os.cpu_count() or 1
        workers = env_int("MTL_WORKERS", cores, 1, 1024)
        threads = env_int("MTL_THREADS", max(1, cores // workers), 1, 1024)
        pinned = bool(os.environ.get("MTL_THREADS", "").strip())
        return cls(
            workers=workers,
            threads=threads,
            # A lone run takes every core (mtl_core/worker.threads_for); MTL_THREADS pins them instead.
            max_threads=env_int("MTL_MAX_THREADS", threads if pinned else cores, 0, 1024),
            max_job_s=_env_float("MTL_MAX_JOB_MINUTES", 30) * 60,
            abandon_s=_env_float("MTL_ABANDON_MINUTES", 10) * 60,
            nice=_worker_nice(),
            limits=Limits.from_env(),
            executor=env_choice("MTL_EXECUTOR", "local", EXECUTORS),
            ray_address=os.environ.get("MTL_RAY_ADDRESS", "").strip(),
        )


def _worker_nice() -> int:
    """MTL_WORKER_NICE: "idle" (the default; the kernel's idle class, `worker.lower_priority`) or a
    niceness of 0-19 (lower priority only: raising it needs root)."""
    if os.environ.get("MTL_WORKER_NICE", "").strip().lower() == "idle":
        return IDLE_CLASS
    try:
        return env_int("MTL_WORKER_NICE", IDLE_CLASS, 0, 19)  # unset (or empty): the idle class
    except SettingError as exc:
        raise SettingError(f"{exc}, or idle") from None


class _Worker:
    def __init__(self, proc: subprocess.Popen, token: str):
        self.proc, self.token, self.started = proc, token, time.monotonic()
        self.store_generation = 0  # JobRunner._store_generation when it started: which store it opened
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
        self._store_generation = 0  # how many times this runner has renewed its store (RunStore.recover)
        self._store_suspect = False  # a worker exited because of the store: check it before starting another
        self._extras: list[_Worker] = []  # one-run workers for the runs that paused runs made way for
        # A read-only store (read-only or full disk) trains nothing: no workers, so no crash loop.
        self._pool_lock = None if store.read_only else self._acquire_pool_lock()
        self.has_pool = self._pool_lock is not None
        self._ray = None  # the Ray backend's pool, when MTL_EXECUTOR=ray
        if self.has_pool:
            # Runs left "running" by a previous server (killed, restarted) end as interrupted now.
            self.store.interrupt_stale(0.0, "the server restarted while it was training; the curve so far is kept")
            if settings.executor == "ray":
                try:
                    from mtl_core.jobs.ray_backend import RayPool

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

    def _spawn(self, extra: bool = False) -> _Worker:
        """A worker process; `extra`: one that trains the waiting runs and exits once none can be claimed
        (fair share, `share_workers`)."""
        token = uuid.uuid4().hex
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "mtl_core.jobs.worker", "--db", str(self.store.path), "--token", token]
        cmd += ["--watch-stdin", "--threads", str(self.settings.threads)]
        cmd += ["--max-threads", str(self.settings.max_threads)]
        cmd += ["--max-seconds", str(self.settings.max_job_s), "--nice", str(self.settings.nice)]
        # However many processes the pool has, no more runs train at once than it has workers.
        cmd += ["--slots", str(self.settings.workers)] + (["--drain"] if extra else [])
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
                    self.store.adopt_sidecars()  # a run its worker could only keep beside its model comes back
                except Exception:  # noqa: BLE001 - the store check below says what is wrong; back off first
                    pass
                self._store_suspect |= code == STORE_EXIT  # the store is read through before the next worker
                if code == STORE_EXIT and w.store_generation != self._store_generation:
                    pass  # it died of the store the server has renewed since: no sign of a crash loop
                elif time.monotonic() - w.started < HEALTHY_S:
                    self._quick_exits += 1
                    backoff = min(MAX_BACKOFF_S, 2.0**self._quick_exits)
                    self._next_spawn = time.monotonic() + backoff
                    self._set_problem(
                        f"Training is paused: workers stopped soon after starting ({self._quick_exits} in a row, "
                        f"exit code {code}); the server tries again in {backoff:.0f} s. The server log says why."
                    )
                else:
                    self._quick_exits = 0
            self._workers = alive
            if time.monotonic() < self._next_spawn or len(self._workers) >= self.n_workers:
                return
            trouble = self._store_trouble()
            if trouble:  # no worker could use this store: start none, look again later
                backoff = min(MAX_BACKOFF_S, 2.0 ** max(1, self._quick_exits))
                self._next_spawn = time.monotonic() + backoff
                self._set_problem(f"Training is paused: {trouble.rstrip('.')}. The server tries again every minute.")
                return
            if self._quick_exits == 0 and self.problem.startswith("Training is paused"):
                self._set_problem("")
            while len(self._workers) < self.n_workers:
                self._workers.append(self._spawn())
                self._workers[-1].store_generation = self._store_generation

    def _set_problem(self, text: str) -> None:
        """The sidebar's sentence; a new kind of problem (or its end) is one line in the server's log."""
        if text.split(":")[0:2] != self.problem.split(":")[0:2] or bool(text) != bool(self.problem):
            print(f"mtl-playground: {text or 'training resumed.'}", file=sys.stderr, flush=True)
        self.problem = text

    def _store_trouble(self) -> str:
        """Why a worker could not use the store now ("" when it can). A store lost or damaged while the
        server runs is recovered here, as a restart would (RunStore.recover); the teacher is told."""
        try:
            self.store.check_writable()
            if not self._quick_exits and not self._store_suspect:
                return ""  # writable, and no worker died of it: no need to read the whole file
        except Exception as exc:  # noqa: BLE001 - sorted below; anything else is the supervisor's to report
            if not is_store_failure(exc):
                raise
            if not isinstance(exc, StoreLost) and isinstance(exc, StoreUnavailable):
                return str(exc)  # read-only or full: nothing to recover, wait for the disk
        try:
            notice = self.store.recover()  # reads the whole file (quick check); renews it only when damaged
            self._store_suspect = False
        except Exception as exc:  # noqa: BLE001 - the folder itself may be gone or read-only
            return str(exc) if isinstance(exc, StoreUnavailable) else "the run store is damaged and cannot be renewed"
        if notice:
            print(f"mtl-playground: {notice}", file=sys.stderr, flush=True)
            self._quick_exits = 0  # the workers died of the store that is now renewed: start them at once
            self._store_generation += 1
        return ""

    def store_damaged(self) -> None:
        """A page found the store damaged: the server that keeps the pool renews it now, as a restart would
        (damaged file kept, readable rows salvaged); a store that checks out whole is left as it is."""
        if not self.has_pool:
            return
        try:
            notice = self.store.recover()
        except Exception as exc:  # noqa: BLE001 - the page already says the store is damaged
            print(f"mtl-playground: the damaged run store could not be renewed ({exc})", file=sys.stderr, flush=True)
            return
        if notice:
            print(f"mtl-playground: {notice}", file=sys.stderr, flush=True)
            self._store_generation += 1

    def supervise_once(self) -> None:
        """One round of supervision; the supervisor thread calls this every second."""
        if not self.has_pool:
            self.store.follow()  # the server that trains may have renewed the store: use the new one
            return
        try:
            self.ensure_workers()
            self.store.top_up(self.limits)  # runs waiting their turn (queue_in_turn) whose owner has room
            alive = frozenset(w.token for w in self._workers if w.proc.poll() is None)
            self.store.interrupt_stale(STALE_S, alive=alive, alive_age_s=STALE_ALIVE_S)
            if self.settings.abandon_s > 0:
                self.store.cancel_abandoned(self.settings.abandon_s)
            if self._quick_exits and any(time.monotonic() - w.started > HEALTHY_S for w in self._workers):
                self._quick_exits = 0
                self._set_problem("")
            self.share_workers()
        except Exception as exc:
            if not is_store_failure(exc):
                raise
            trouble = self._store_trouble()  # recovers a lost or damaged store
            if trouble:
                self._set_problem(f"Training is paused: {trouble.rstrip('.')}. The server tries again every minute.")

    def share_workers(self) -> None:
        """Fair share (local pool): round robin orders the queue but pre-empts nothing, so when a student
        whose run waits has nothing running while every slot trains, one long run (of the student with
        the most running, trained `yield_after_s` at least) is asked to pause in place, and one extra
        worker starts for the waiting run. Once nobody waits, paused runs go on, the longest paused
        first, as slots free up. Extra workers train waiting runs until none can be claimed, then exit (a
        wave of short runs pays one process start, not one each), so the pool grows by at most its size
        in processes (the paused runs' memory), and no more runs than `workers` train at once."""
        if not self.has_pool or self._closed.is_set() or self.settings.executor != "local":
            return
        slots = self.settings.workers
        with self._lock:
            alive = []
            for w in self._extras:
                code = w.proc.poll()
                if code is None:
                    alive.append(w)
                    continue
                if w.proc.stdin:
                    w.proc.stdin.close()
                why = f"its worker process died (exit code {code}); the curve so far is kept"
                self.store.interrupt_worker(w.token, why)
            self._extras = alive
            if time.monotonic() < self._next_spawn:
                return  # workers are dying at start: leave it to ensure_workers's back-off
            state = self.store.share_state()
            # Workers that hold no run (extras still starting included) claim the next waiting runs.
            idle = sum(w.token not in state.holders for w in self._workers + self._extras)
            training, paused, promised = state.training, state.paused, 0
            for _ in range(state.waiting):  # each waiting run: a slot to train in, and a worker to claim it
                if training + promised >= slots:
                    if not self.store.request_yield(self.settings.yield_after_s, slots):
                        break
                    training, paused = training - 1, paused + 1
                if promised < idle:
                    promised += 1
                elif len(self._extras) < paused:
                    self._extras.append(self._spawn(extra=True))
                    idle, promised = idle + 1, promised + 1
                else:
                    break
            if paused:  # slots no waiting run was promised go back to paused runs, the longest paused first
                self.store.resume_paused(slots - promised)

    def _supervise_loop(self) -> None:
        while not self._closed.wait(SUPERVISE_S):
            try:
                self.supervise_once()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive a bad moment of the store
                if not self.problem:
                    print(f"mtl-playground: the job supervisor hit {type(exc).__name__}: {exc}", file=sys.stderr)
                    self.problem = "The job supervisor hit a problem and will retry; the server log says what."

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

    def queue_in_turn(
        self, points: list[tuple[str, TrainConfig]], owner: str = "", client: str = ""
    ) -> tuple[str, list[str]]:
        """Queue more runs ((label, config) each) than one owner's cap at once: as many now as it allows, the
        rest as earlier ones end (RunStore.queue_in_turn). The waiting list's id and the runs queued now."""
        turn = self.store.queue_in_turn([(label, c.to_dict()) for label, c in points], owner, client, self.limits)
        self.ensure_workers()
        return turn

    def claim_sweep_point(self, sweep_id: str, owner: str, client: str = "") -> str | None:
        """Queue the next untaken point of a class's sweep as `owner`'s run (None: every point is taken)."""
        run_id = self.store.claim_sweep_point(sweep_id, owner, client, self.limits)
        if run_id is not None:
            self.ensure_workers()
        return run_id

    def stop(self, run_id: str, by_teacher: bool = False) -> None:
        self.store.request_stop(run_id, by_teacher)

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
        return [w.proc.pid for w in self._workers + self._extras if w.proc.poll() is None]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the supervisor and the workers now; a running job ends as interrupted, its curve kept."""
        self._closed.set()
        if self._ray is not None:
            self._ray.shutdown(timeout)
            self._ray = None
        with self._lock:
            everyone, self._extras = self._workers + self._extras, []
            for w in everyone:
                w.proc.terminate()
            for w in everyone:
                try:
                    w.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                try:
                    self.store.interrupt_worker(w.token, "the server shut the worker down")
                except Exception as exc:  # noqa: BLE001 - sorted just below
                    # A read-only, full or lost store: the next server's start ends the run as interrupted
                    # (interrupt_stale), so stopping the remaining workers and the pool lock comes first.
                    if not is_store_failure(exc):
                        raise
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
