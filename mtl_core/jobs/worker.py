"""A training worker process: claims queued runs from the run store one at a time and trains them.

Run as `python -m mtl_core.jobs.worker --db PATH --token T`. Liveness never rests on process ids: the
worker writes a heartbeat for its run every second, every write is guarded by its token, and with
`--watch-stdin` it stops within a second once its server is gone (the server holds the other end of
the worker's stdin pipe; the operating system closes it whichever way the server dies).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import torch

from mtl_core.analysis import predictions_bytes, predictions_from_outputs
from mtl_core.checkpoint import model_bytes
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.data import DataUnavailable, MTLData, load_data, make_multimnist
from mtl_core.jobs.autogroup import set_group_nice
from mtl_core.settings import IDLE_CLASS
from mtl_core.store.run_link import STORE_ERRORS, RunLink, StoreLink, is_store_failure, store_problem
from mtl_core.store.runs import STORE_EXIT, RunStore
from mtl_core.training.loop import Training

POLL_S = 0.3
STOP_CHECK_S = 0.2
PAUSE_POLL_S = 0.2  # while paused for another student's run: how often to ask whether to go on
HEARTBEAT_S = 1.0
THREADS_CHECK_S = 1.0

# Set when the server is gone or shut the worker down: the running job stops at its next batch and is
# recorded as interrupted (curve and best weights kept); then the worker exits.
_terminating = threading.Event()
_why_terminating = ["the server shut the worker down"]


class _DataCache:
    """Each source is loaded once per worker (full MNIST takes about a second)."""

    def __init__(self) -> None:
        self._cache: dict[str, MTLData] = {}

    def get(self, source: str) -> MTLData:
        if source not in self._cache:
            # MultiMNIST from the digits "auto" holds (already here, or kept for the next MNIST run).
            self._cache[source] = make_multimnist(self.get("auto")) if source == "multimnist" else load_data(source)
        return self._cache[source]


def _terminate(why: str) -> None:
    _why_terminating[0] = why
    _terminating.set()


def _watch_stdin() -> None:
    """The server never writes to our stdin; end-of-file means it has exited or been killed."""
    try:  # the raw descriptor, not sys.stdin: a thread blocked in a buffered read breaks interpreter exit
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    _terminate("the server stopped")


class _Heartbeat:
    """Writes a heartbeat for the current run every second from a thread of its own, so a long
    evaluation or data load never looks like a dead worker."""

    def __init__(self) -> None:
        self.link: RunLink | None = None  # set while a run is held
        self.training: Training | None = None  # set while a run trains: its progress goes with the beat
        self._closed = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="heartbeat").start()

    def close(self) -> None:
        self.link, self.training = None, None
        self._closed.set()

    def _loop(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            link, training = self.link, self.training
            if link is not None:
                try:
                    link.heartbeat(training.epoch_done if training is not None else None)
                except Exception:  # noqa: BLE001 - a missed beat is retried; the store may be busy
                    pass


def threads_for(running: int, cores: int, base: int) -> int:
    """Torch threads for one run while `running` runs train on this machine's `cores`: the cores shared
    out, never fewer than the worker's `base`. Measured (`python benchmarks/speed.py`, one vs two threads):
    on an otherwise idle machine every model kind trains faster on two threads than on one (1.2x the
    MLPs, 1.6x the CNN), but two runs on one thread each get more done than one after the other on two;
    and two runs with two threads each on two cores wait on each other's spinning threads (many times
    slower). So a run alone takes every core and gives them back as soon as another starts."""
    return max(base, min(cores, cores // max(1, running)))


class ThreadShare:
    """Re-checks, every THREADS_CHECK_S, how many runs train on this machine (the store says) and sets
    this worker's torch threads with `threads_for`. Off (`max_threads` <= `base`) it never changes them."""

    def __init__(self, store: RunStore | None, base: int, max_threads: int):
        self.store, self.base, self.max_threads = store, max(1, base), max_threads
        self._last = -math.inf

    @property
    def on(self) -> bool:
        return self.store is not None and self.max_threads > self.base

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (not force and now - self._last < THREADS_CHECK_S):
            return
        self._last = now
        try:
            n = threads_for(self.store.count_training(), self.max_threads, self.base)
        except Exception:  # noqa: BLE001 - a busy store: keep the threads as they are and ask again later
            return
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    def release(self) -> None:
        """Back to the base threads between runs."""
        if self.on and torch.get_num_threads() != self.base:
            torch.set_num_threads(self.base)


class _StopCheck:
    """The training loop's stop callback: the owner's Stop, the server going away, or the time cap.
    It also keeps this worker's threads fitted to the machine's load (`ThreadShare`), and holds the run
    paused while the job runner asks it to make way for another student's run (`_pause`)."""

    def __init__(self, link: RunLink, max_seconds: float, share: ThreadShare | None = None):
        self.link = link
        self.deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
        self.max_seconds = max_seconds
        self.timed_out = False
        self.share = share
        self._last, self._requested = 0.0, False
        self.paused_s = 0.0  # seconds held paused in all; not counted against the time cap
        self._unreported = 0.0  # of which not yet taken off an epoch's seconds (`take_paused`)
        # Only the local pool pauses runs; a link without the question (a Ray task's) never pauses.
        self._yield = getattr(link, "yield_requested", None)

    def __call__(self) -> bool:
        if _terminating.is_set() or getattr(self.link, "problem", ""):  # the store failed: keep the run on disk
            return True
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            self.timed_out = True
            return True
        if now - self._last >= STOP_CHECK_S:
            self._last, self._requested = now, self.link.stop_requested()
            if not self._requested and self._yield is not None and self._yield():
                self._pause()
            if self.share is not None:
                self.share()
        return self._requested or _terminating.is_set()

    def _pause(self) -> None:
        """Wait here, between two batches, while the runner asks: the model, optimiser and curve stay in
        memory, so the run goes on exactly where it was; the heartbeat thread keeps beating. Stop and the
        server going away still end it. The time spent here is not the job's (deadline, seconds)."""
        t0 = time.monotonic()
        self.link.paused(True)
        if self.share is not None:
            self.share.release()
        try:
            while not _terminating.wait(PAUSE_POLL_S):
                if self.link.stop_requested():
                    self._requested = True
                    break
                if not self._yield():
                    break
        finally:
            held = time.monotonic() - t0
            self.paused_s += held
            self._unreported += held
            if self.deadline is not None:
                self.deadline += held
            self.link.paused(False)
        if self.share is not None:
            self.share(force=True)

    def take_paused(self) -> float:
        """Seconds paused since the last call: the epoch record that comes next takes them off."""
        held, self._unreported = self._unreported, 0.0
        return held


def train_run(
    link: RunLink,
    config_dict: dict,
    data: _DataCache,
    max_seconds: float = 0,
    beat: _Heartbeat | None = None,
    share: ThreadShare | None = None,
) -> str:
    """Train one claimed run to its end, reporting everything through `link`. Never raises.

    The best weights are saved whenever an epoch improves on them, so a run cut short by a crash or
    a killed server still has them."""
    try:
        config = TrainConfig.from_dict(config_dict)
        dataset = data.get(config.data)
        stop = _StopCheck(link, max_seconds, share)
        if share is not None:
            share(force=True)  # this run is already counted as running
        training = Training(config, dataset, stop=stop)
        if beat is not None:
            beat.training = training  # the heartbeat reports how far the epoch is
        how = f"{training.device} · {training.precision} · {training.path} path"
        if training.kernel:
            how += f" ({training.kernel})"  # the MLPs' loop (C++ or Python); the CNNs' C++ max-pool
        if training.path_note:
            how += f": {training.path_note}"  # why not a faster step (mtl_core/training/steps.py, choose_step)
        link.started(training.params, dataset.source, how)
        run_id = link.run_id
        saved_epoch, save_error = 0, ""
        discounted = 0.0  # seconds paused for other students' runs, taken off the epochs they fell in
        for record in training.records():
            held = stop.take_paused()
            if held:
                record["seconds"] = max(0.0, record["seconds"] - held)
                record["train_only_seconds"] = max(0.0, record["train_only_seconds"] - held)
                discounted += held
            if not link.epoch(record):
                return "lost"  # someone else ended this run (stale heartbeat); leave it as they recorded
            if training.best_epoch == record["epoch"]:
                # The weights right now are the best so far (Training keeps them as its best state).
                blob = model_bytes(training.model, config, {"run_id": run_id, "best_epoch": record["epoch"]})
                save_error = link.save_weights(blob, record["epoch"])
                if not save_error:
                    saved_epoch = record["epoch"]
        summary = training.summary()
        summary["train_seconds"] = max(0.0, summary["train_seconds"] - discounted)
        status, reason = training.status, training.reason
        if _terminating.is_set() and status == "cancelled":
            status, reason = "interrupted", f"{_why_terminating[0]} during the run; the curve so far is kept"
        elif stop.timed_out:
            reason = f"reached this server's time limit of {max_seconds / 60:g} min per job"
        if training.best_epoch > 0 and saved_epoch != training.best_epoch:
            blob = model_bytes(training.model, config, {"run_id": run_id, "summary": summary})
            save_error = link.save_weights(blob, training.best_epoch)  # recorded only once it is on disk
            if not save_error:
                saved_epoch = training.best_epoch
        if save_error:
            reason = "; ".join(filter(None, [reason, save_error]))
        preds = False
        if saved_epoch and saved_epoch == training.best_epoch:
            # The same forward pass (and precision) that scored the epochs: table and matrices agree.
            preds_data = predictions_from_outputs(training.test_outputs(), dataset.test_y)
            preds = link.save_preds(predictions_bytes(preds_data))
        # After a failed save, an earlier best file is still good.
        link.finish(status, reason, summary, weights=bool(saved_epoch), preds=preds)
        return status
    except ConfigError as exc:
        link.finish("failed", str(exc))
    except DataUnavailable as exc:
        advice = "choose 'auto' or the embedded subset to train on the digits this server has"
        link.finish("failed", f"the data is not available here ({exc}); {advice}")
    except Exception as exc:  # noqa: BLE001 - a worker must survive any one bad run
        if isinstance(link, StoreLink) and is_store_failure(exc):  # lost, damaged or unwritable under the run
            link.problem = link.problem or store_problem(exc)
            print(f"mtl worker: {link.problem} Run {link.run_id} is kept beside its model file.", file=sys.stderr)
            link.finish("interrupted")  # on disk only: the server brings it back into its store
            return "store-lost"
        traceback.print_exc(file=sys.stderr)
        try:
            link.finish("failed", f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the store itself may be what failed
            traceback.print_exc(file=sys.stderr)
    return "failed"


def execute_run(
    store: RunStore,
    run_id: str,
    data: _DataCache,
    worker: str,
    max_seconds: float = 0,
    beat: _Heartbeat | None = None,
    share: ThreadShare | None = None,
) -> str:
    """Train a run this worker claimed from the store (the local backend)."""
    link = StoreLink(store, run_id, worker)
    if beat is not None:
        beat.link = link
    try:
        link.run = store.get_run(run_id)
        config = link.run["config"]
    except Exception as exc:  # noqa: BLE001 - an unreadable record fails that run, not the worker
        link.finish("failed", f"its record could not be read ({type(exc).__name__}: {exc})")
        return "failed"
    try:
        return train_run(link, config, data, max_seconds, beat, share)
    finally:
        if share is not None:
            share.release()


def serve(
    db_path: str,
    worker: str | None = None,
    drain: bool = False,
    watch_stdin: bool = False,
    threads: int = 0,
    max_seconds: float = 0,
    nice: int = 0,
    max_threads: int = 0,
    slots: int = 0,
) -> None:
    """`threads`: torch threads per run; with `max_threads` above it, a run alone on the machine takes
    up to that many and gives them back when other runs start (`ThreadShare`). `slots` (the pool's size):
    claim a run only while fewer runs than that train (runs paused for fair share do not count). `drain`:
    train queued runs one after another and exit as soon as none can be claimed (the fair-share extra
    worker: one process start for a whole wave of waiting runs, not one per run)."""
    worker = worker or uuid.uuid4().hex
    lower_priority(nice)
    if threads > 0:
        # One thread per worker and one worker per core: tiny matrices gain nothing from a second
        # thread, and two workers with two threads each on two cores wait on each other.
        torch.set_num_threads(threads)
    try:
        store = RunStore(db_path, repair=False)  # only the server creates, repairs or recovers a store
    except STORE_ERRORS as exc:
        _exit_for_store(exc)
    share = ThreadShare(store, threads or torch.get_num_threads(), max_threads)
    data = _DataCache()
    signal.signal(signal.SIGTERM, lambda *_: _terminate("the server shut the worker down"))
    if watch_stdin:
        threading.Thread(target=_watch_stdin, daemon=True, name="stdin-watch").start()
    beat = _Heartbeat()
    try:  # load the default digits now, so the first student's run does not wait for them
        data.get("auto")
    except Exception:  # noqa: BLE001 - a run that needs the data will say why it is missing
        pass
    print("ready", flush=True)  # the runner waits for this line (JobRunner.wait_ready)
    while not _terminating.is_set():
        try:
            run_id = store.claim_next(worker, os.getpid(), slots or None)
        except STORE_ERRORS as exc:
            _exit_for_store(exc)
        if run_id is not None:
            execute_run(store, run_id, data, worker, max_seconds, beat, share)
            beat.link, beat.training = None, None
            continue
        if drain:
            return
        _terminating.wait(POLL_S)


def _exit_for_store(exc: BaseException) -> None:
    """A store this worker cannot use: one line for the server's log, then exit (the runner backs off)."""
    print(f"mtl worker: {store_problem(exc)} This worker exits; the server retries later.", file=sys.stderr)
    sys.exit(STORE_EXIT)


def lower_priority(nice: int) -> None:
    """Below the server in the CPU's queue: on a busy box a click is answered first and training takes
    what is left (on an otherwise idle machine this costs training nothing). IDLE_CLASS goes further than
    any niceness: the kernel runs this process only on CPU time no ordinary process wants, so neither the
    server nor a browser on the same machine ever waits for training. Where there is no idle class, the
    lowest niceness."""
    if nice >= IDLE_CLASS:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            nice = 19
        else:
            _lower_session_group(19)
            return
    if nice > 0:
        _lower_session_group(os.nice(nice))


def _lower_session_group(nice: int) -> None:
    """Where the kernel groups processes by session (Linux's autogroup, on by default in most
    distributions and on this project's machines), CPU time is shared between sessions first, and a
    process's niceness or idle class counts only against its own session's other processes: a worker in
    a session of its own (the runner starts each so) got as much CPU as the whole server, half a core
    beside one busy browser. So its session's group is lowered to `nice` too; only when the worker leads
    a session of its own, never when it shares the caller's (a worker started by hand from a shell)."""
    if os.getsid(0) != os.getpid():
        return
    set_group_nice(nice)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("--token", default=None, help="this worker's id in the store (default: a random one)")
    ap.add_argument("--watch-stdin", action="store_true", help="exit once stdin closes (the server is gone)")
    ap.add_argument("--drain", action="store_true", help="train queued runs until none can be claimed, then exit")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--max-seconds", type=float, default=0, help="stop a job after this long (0: no limit)")
    ap.add_argument(
        "--nice", type=int, default=0, help=f"lower this worker's CPU priority by this much ({IDLE_CLASS}: idle class)"
    )
    ap.add_argument(
        "--max-threads", type=int, default=0, help="threads a run alone on the machine may take (0: --threads)"
    )
    ap.add_argument("--slots", type=int, default=0, help="claim only while fewer runs train than this (0: no cap)")
    args = ap.parse_args(argv)
    serve(
        str(args.db),
        args.token,
        args.drain,
        args.watch_stdin,
        args.threads,
        args.max_seconds,
        args.nice,
        args.max_threads,
        args.slots,
    )


if __name__ == "__main__":
    main()
