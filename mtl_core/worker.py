"""A training worker process: claims queued runs from the run store one at a time and trains them.

Run as `python -m mtl_core.worker --db PATH`. It never trains inside the dashboard's script thread,
writes every epoch to the store as it goes, and exits when its parent is gone and it is idle, so a
closed dashboard never cuts a running job short.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from .checkpoint import save_model
from .config import ConfigError, TrainConfig
from .data import DataUnavailable, MTLData, load_data
from .runs import RunStore
from .train import Training

POLL_S = 0.3
STOP_CHECK_S = 0.2

# Set by SIGTERM (JobRunner.shutdown): the running job stops at its next batch and is recorded as cancelled.
_terminating = threading.Event()


class _DataCache:
    """Each source is loaded once per worker (full MNIST takes about a second)."""

    def __init__(self) -> None:
        self._cache: dict[str, MTLData] = {}

    def get(self, source: str) -> MTLData:
        if source not in self._cache:
            self._cache[source] = load_data(source)
        return self._cache[source]


def _throttled_stop(store: RunStore, run_id: str):
    last = [0.0, False]

    def stop() -> bool:
        if _terminating.is_set():
            return True
        now = time.monotonic()
        if now - last[0] >= STOP_CHECK_S:
            last[0], last[1] = now, store.stop_requested(run_id)
        return last[1]

    return stop


def execute_run(store: RunStore, run_id: str, data: _DataCache) -> str:
    """Train one claimed run to its end, recording everything in the store. Never raises."""
    try:
        config = TrainConfig.from_dict(store.get_run(run_id)["config"])
        dataset = data.get(config.data)
        training = Training(config, dataset, stop=_throttled_stop(store, run_id))
        store.mark_started(run_id, training.params, dataset.source, f"{training.device} · {training.precision}")
        for record in training.records():
            store.add_epoch(run_id, record)
        path = None
        if training.best_epoch > 0:
            path = str(store.models_dir / f"{run_id}.safetensors")
            save_model(path, training.model, config, {"run_id": run_id, "summary": training.summary()})
        reason = "the server shut the worker down" if _terminating.is_set() else training.reason
        store.finish(run_id, training.status, reason, training.summary(), path)
        return training.status
    except (ConfigError, DataUnavailable) as exc:
        store.finish(run_id, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - a worker must survive any one bad run
        traceback.print_exc(file=sys.stderr)
        store.finish(run_id, "failed", f"{type(exc).__name__}: {exc}")
    return "failed"


def serve(db_path: str, parent_pid: int | None = None, once: bool = False) -> None:
    store = RunStore(db_path)
    data = _DataCache()
    signal.signal(signal.SIGTERM, lambda *_: _terminating.set())
    while not _terminating.is_set():
        run_id = store.claim_next(os.getpid())
        if run_id is not None:
            execute_run(store, run_id, data)
            if once:
                return
            continue
        if once or (parent_pid and os.getppid() != parent_pid):
            return  # idle and orphaned: nobody will stop us any more
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("--parent", type=int, default=None, help="exit when idle once this pid is gone")
    ap.add_argument("--once", action="store_true", help="train at most one queued run, then exit")
    args = ap.parse_args(argv)
    serve(str(args.db), args.parent, args.once)


if __name__ == "__main__":
    main()
