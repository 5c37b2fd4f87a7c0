"""Training on a Ray cluster while the run store stays on the dashboard host (MTL_EXECUTOR=ray).

The job runner keeps everything it does for the local pool (fair claiming, caps, stale heartbeats,
Stop) and hands each claimed run to a Ray task instead of a worker process. A task never opens the
SQLite file: its ChannelLink sends the run's calls (started, each epoch, heartbeats, the weights as
safetensors bytes, the test-set predictions, finish) to a small actor pinned to this host, and the
pool drains them into the store every 0.2 s through the same StoreLink a local worker writes with.
Stop is a flag in that actor that the training loop reads every 0.2 s, with `ray.cancel` as the
fallback; a task whose worker or node is lost ends its run as interrupted, curve and best weights kept.

Ray is imported only when this backend is chosen: the local pool needs none of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mtl_core.store.run_link import StoreLink
from mtl_core.store.runs import RunStore

PUMP_S = 0.2
CANCEL_AFTER_S = 5.0  # a task that has not stopped this long after its flag was set is cancelled
ROOT = str(Path(__file__).resolve().parents[2])


def _python_path() -> str:
    return os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))


def _ray():
    import ray

    return ray


_CHANNEL = None


def _channel_class():
    """The actor class, made on first use (defining it imports Ray)."""
    global _CHANNEL
    if _CHANNEL is None:
        ray = _ray()

        @ray.remote(num_cpus=0)
        class Channel:
            """Messages from the tasks to the store's host, and the stop flags the other way."""

            def __init__(self) -> None:
                self._messages: list[tuple] = []
                self._stop: set[str] = set()

            def put(self, message: tuple) -> None:
                self._messages.append(message)

            def take(self) -> list[tuple]:
                out, self._messages = self._messages, []
                return out

            def stop(self, run_id: str) -> None:
                self._stop.add(run_id)

            def should_stop(self, run_id: str) -> bool:
                return run_id in self._stop

            def forget(self, run_id: str) -> None:
                self._stop.discard(run_id)

        _CHANNEL = Channel
    return _CHANNEL


class ChannelLink:
    """A run's link (mtl_core/store/run_link.py) inside a Ray task: every call becomes a message to the host.
    Calls from one process reach an actor in the order they were made; `finish` waits until the actor
    has everything, so the run's record is complete before the task returns."""

    def __init__(self, channel, run_id: str):
        self.channel, self.run_id = channel, run_id

    def _send(self, method: str, *args, wait: bool = False, **kwargs) -> None:
        ref = self.channel.put.remote((self.run_id, method, args, kwargs))
        if wait:
            _ray().get(ref)

    def started(self, params: int, data_source: str, device: str) -> bool:
        self._send("started", params, data_source, device)
        return True

    def epoch(self, record: dict) -> bool:
        self._send("epoch", record)
        return True  # a run taken away on the host comes back as a stop flag

    def heartbeat(self, epoch_done: float | None) -> bool:
        self._send("heartbeat", epoch_done)
        return True

    def save_weights(self, blob: bytes, best_epoch: int | None) -> str:
        self._send("save_weights", blob, best_epoch)
        return ""  # a failed write on the host is added to the run's reason when it finishes

    def save_preds(self, blob: bytes) -> bool:
        self._send("save_preds", blob)
        return True

    def finish(self, status: str, reason: str = "", summary: dict | None = None, weights: bool = False,
               preds: bool = False) -> bool:  # fmt: skip
        self._send("finish", status, reason, summary, weights=weights, preds=preds, wait=True)
        return True

    def stop_requested(self) -> bool:
        return bool(_ray().get(self.channel.should_stop.remote(self.run_id)))


_DATA = None


def _train_task(run_id: str, config: dict, channel, threads: int, max_seconds: float) -> str:
    """One run on a Ray worker: the local worker's training code, reporting through the channel."""
    global _DATA
    import torch

    from mtl_core.jobs import worker

    if threads > 0:
        torch.set_num_threads(threads)
    if _DATA is None:
        _DATA = worker._DataCache()  # one per Ray worker process, like a local worker's
    link = ChannelLink(channel, run_id)
    beat = worker._Heartbeat()
    beat.link = link
    try:
        return worker.train_run(link, config, _DATA, max_seconds, beat)
    finally:
        beat.close()


@dataclass
class _Task:
    run_id: str
    token: str
    submitted: float = field(default_factory=time.monotonic)
    heard: bool = False  # a message has come from it: it is running on a node
    stop_sent: float = 0.0
    save_error: str = ""
    beat_at: float = 0.0
    shutting_down: bool = False  # the server is stopping it, not its owner


class RayPool:
    """Claims runs from the store and trains each as a Ray task, as many at once as the cluster has
    CPUs for (`threads` CPUs a task); the rest wait in the store's fair queue, not in Ray's."""

    def __init__(self, store: RunStore, threads: int = 1, max_seconds: float = 0.0, address: str = ""):
        ray = _ray()
        self.store, self.threads, self.max_seconds = store, max(1, threads), max_seconds
        self.problem = ""
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # No address: a local instance on this machine. The workers import this project from here.
            ray.init(
                address=address or None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                runtime_env={
                    "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
                },
            )
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()  # the channel lives and dies with this host
        self.channel = (
            _channel_class().options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        )
        ray.get(self.channel.take.remote())  # ready: the actor answers
        self._remote = ray.remote(_train_task)
        self._tasks: dict = {}  # ObjectRef -> _Task
        self.capacity = self.slots()  # runs at once, as of the last look at the cluster
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="ray-pool").start()

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed.wait(PUMP_S):
            try:
                self.pump()
                if self.problem.startswith("The Ray backend"):
                    self.problem = ""
            except Exception as exc:  # noqa: BLE001 - a bad moment of the cluster must not end the loop
                traceback.print_exc()
                self.problem = f"The Ray backend hit a problem and will retry: {type(exc).__name__}: {exc}"

    def pump(self) -> None:
        with self._lock:
            self._drain()
            self._reap()
            self._stops()
            self._claim()

    def slots(self) -> int:
        cpus = _ray().cluster_resources().get("CPU", 0)
        return int(cpus // self.threads)

    def _drain(self) -> None:
        by_run = {t.run_id: t for t in self._tasks.values()}
        for run_id, method, args, kwargs in _ray().get(self.channel.take.remote(), timeout=30):
            task = by_run.get(run_id)
            if task is None:
                continue  # a task already given up on (cancelled, lost): the store has its end
            task.heard = True
            if method == "finish":
                status, reason, *rest = args
                if task.shutting_down and status == "cancelled":
                    status, reason = "interrupted", "the server shut the worker down during the run; the curve is kept"
                args = (status, "; ".join(filter(None, [reason, task.save_error])), *rest)
            result = getattr(StoreLink(self.store, run_id, task.token), method)(*args, **kwargs)
            if method == "save_weights":
                task.save_error = result
            elif method == "epoch" and result is False:
                self.channel.stop.remote(run_id)  # someone else ended this run: stop training it
        now = time.monotonic()
        for task in self._tasks.values():
            if not task.heard and now - task.beat_at >= 1.0:
                # Still in Ray's queue or starting a worker: alive as far as we know (a lost node ends
                # the task with an error, which _reap records).
                self.store.heartbeat(task.run_id, task.token)
                task.beat_at = now

    def _reap(self) -> None:
        ray = _ray()
        if not self._tasks:
            return
        done, _ = ray.wait(list(self._tasks), num_returns=len(self._tasks), timeout=0)
        if not done:
            return
        self._drain()  # what the finished tasks sent last
        for ref in done:
            task = self._tasks.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                self.store.finish(task.run_id, "cancelled", "stopped by its owner", worker=task.token)
            except Exception as exc:  # noqa: BLE001 - a lost worker or node, or a crash in the task
                why = type(exc).__name__
                self.store.interrupt_worker(
                    task.token, f"its Ray worker or node was lost ({why}); the curve so far is kept"
                )
            else:
                self.store.interrupt_worker(task.token, "its Ray task ended without a result; the curve is kept")
            self.channel.forget.remote(task.run_id)

    def _stops(self) -> None:
        ray = _ray()
        now = time.monotonic()
        for ref, task in self._tasks.items():
            if not task.stop_sent:
                if self.store.stop_requested(task.run_id):
                    self.channel.stop.remote(task.run_id)
                    task.stop_sent = now
            elif now - task.stop_sent > CANCEL_AFTER_S:
                ray.cancel(ref, force=True)

    def _claim(self) -> None:
        slots = self.capacity = self.slots()
        no_cpus = "The Ray cluster has no CPUs for training"
        if slots == 0:
            self.problem = f"{no_cpus} ({self.threads} per run); queued runs wait until a node joins."
        elif self.problem.startswith(no_cpus):
            self.problem = ""
        free = slots - len(self._tasks)
        while free > 0:
            token = f"ray-{uuid.uuid4().hex}"
            run_id = self.store.claim_next(token)
            if run_id is None:
                return
            config = self.store.get_run(run_id)["config"]
            options = {"num_cpus": self.threads, "max_retries": 0}
            if config.get("device") == "cuda":
                if not _ray().cluster_resources().get("GPU"):
                    # Ray would keep it pending forever; say so now instead.
                    why = "this Ray cluster has no GPU: choose device 'auto' or 'cpu'"
                    self.store.finish(run_id, "failed", why, worker=token)
                    continue
                options["num_gpus"] = 1
            ref = self._remote.options(**options).remote(run_id, config, self.channel, self.threads, self.max_seconds)
            self._tasks[ref] = _Task(run_id, token)
            free -= 1

    # -- the runner's side -----------------------------------------------------------------------

    def running(self) -> list[str]:
        with self._lock:
            return [t.run_id for t in self._tasks.values()]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every task (flag first, then cancel); their runs end as interrupted with their curves."""
        ray = _ray()
        self._closed.set()
        with self._lock:
            for task in self._tasks.values():
                task.shutting_down = True
                self.channel.stop.remote(task.run_id)
            refs = list(self._tasks)
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=min(timeout, 5.0))
            try:
                self._drain()
            except Exception:  # noqa: BLE001 - the cluster may be gone already
                pass
            for ref, task in self._tasks.items():
                ray.cancel(ref, force=True)
                self.store.interrupt_worker(task.token, "the server shut the worker down")
            self._tasks.clear()
        if self._owns_ray:
            ray.shutdown()
