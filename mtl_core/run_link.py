"""What training one claimed run needs from the run store, as one small object per run.

A local worker process (mtl_core/worker.py) holds a StoreLink, which writes to the store itself. A
task on a Ray node (mtl_core/ray_backend.py) never opens the store: its link sends the same calls as
messages to the dashboard host, which applies them through a StoreLink. So one code path writes every
run, whichever backend trained it, and every write is guarded by the worker token that holds the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .checkpoint import atomic_write_bytes
from .runs import RunStore


class RunLink(Protocol):
    run_id: str

    def started(self, params: int, data_source: str, device: str) -> bool: ...
    def epoch(self, record: dict) -> bool: ...
    def heartbeat(self, epoch_done: float | None) -> bool: ...
    def save_weights(self, blob: bytes, best_epoch: int | None) -> str: ...
    def save_preds(self, blob: bytes) -> bool: ...
    def finish(self, status: str, reason: str = "", summary: dict | None = None, weights: bool = False,
               preds: bool = False) -> bool: ...  # fmt: skip
    def stop_requested(self) -> bool: ...


class StoreLink:
    """A run's writes straight into the store, each guarded by the token of the worker that holds it."""

    def __init__(self, store: RunStore, run_id: str, worker: str):
        self.store, self.run_id, self.worker = store, run_id, worker
        self.weights_path: Path = store.models_dir / f"{run_id}.safetensors"
        self.preds_path: Path = store.models_dir / f"{run_id}.preds.safetensors"

    def started(self, params: int, data_source: str, device: str) -> bool:
        return self.store.mark_started(self.run_id, self.worker, params, data_source, device)

    def epoch(self, record: dict) -> bool:
        """False when this worker no longer holds the run (someone else ended it): stop training it."""
        return self.store.add_epoch(self.run_id, record, self.worker)

    def heartbeat(self, epoch_done: float | None) -> bool:
        return self.store.heartbeat(self.run_id, self.worker, epoch_done)

    def save_weights(self, blob: bytes, best_epoch: int | None) -> str:
        """Write the model file; with `best_epoch`, record it as the run's best so far (an interrupted run
        keeps it). "" when saved, else why not: a full disk must not end the run."""
        try:
            atomic_write_bytes(self.weights_path, blob)
        except OSError as exc:
            return f"the model could not be saved ({exc.strerror or exc})"
        if best_epoch is not None:
            self.store.set_best(self.run_id, self.worker, best_epoch, str(self.weights_path))
        return ""

    def save_preds(self, blob: bytes) -> bool:
        """Test-set predictions, scored once when the run ends (the dashboard never scores at page load)."""
        try:
            atomic_write_bytes(self.preds_path, blob)
        except OSError:
            return False  # the dashboard then scores the test set itself when asked
        return True

    def finish(
        self, status: str, reason: str = "", summary: dict | None = None, weights: bool = False, preds: bool = False
    ) -> bool:
        return self.store.finish(
            self.run_id,
            status,
            reason,
            summary,
            str(self.weights_path) if weights else None,
            worker=self.worker,
            preds_path=str(self.preds_path) if preds else None,
        )

    def stop_requested(self) -> bool:
        return self.store.stop_requested(self.run_id)
