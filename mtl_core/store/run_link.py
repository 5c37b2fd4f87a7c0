"""What training one claimed run needs from the run store, as one small object per run.

A local worker process (mtl_core/jobs/worker.py) holds a StoreLink, which writes to the store itself. A
task on a Ray node (mtl_core/jobs/ray_backend.py) never opens the store: its link sends the same calls as
messages to the dashboard host, which applies them through a StoreLink. So one code path writes every
run, whichever backend trained it, and every write is guarded by the worker token that holds the run.

No run is lost with its store: a StoreLink keeps the run's record and epochs in memory and, when the run
ends, writes them beside the model file (`salvage.write_sidecar`). If the store is deleted, emptied,
replaced, damaged or unwritable during the run, the first failed call marks the link (`problem`), the
worker stops training at its next batch, and the run is kept on disk as interrupted, with its curve and
the model file of the epoch it names; the server brings it back into the store it recovers or restarts on.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Protocol

from mtl_core.checkpoint import atomic_write_bytes
from mtl_core.store import salvage
from mtl_core.store.runs import RunStore, StoreUnavailable, is_store_failure, store_problem

STORE_ERRORS = (StoreUnavailable, sqlite3.DatabaseError)


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

    def __init__(self, store: RunStore, run_id: str, worker: str, run: dict | None = None):
        self.store, self.run_id, self.worker = store, run_id, worker
        self.weights_path: Path = store.models_dir / f"{run_id}.safetensors"
        self.preds_path: Path = store.models_dir / f"{run_id}.preds.safetensors"
        self.run = dict(run or {"id": run_id})  # the record as claimed, kept so the run outlives its store
        self.records: list[dict] = []  # every epoch reported through this link
        self.saved_epoch = 0  # the epoch whose weights the model file holds
        self.problem = ""  # set once the store failed under this run: training stops, the run is kept on disk

    def _call(self, method, *args, **kwargs):
        """A store call; a store that is lost or cannot be written marks this link before the error goes on."""
        try:
            return method(*args, **kwargs)
        except STORE_ERRORS as exc:
            if is_store_failure(exc):
                self.problem = self.problem or store_problem(exc)
            raise

    def started(self, params: int, data_source: str, device: str) -> bool:
        self.run.update(params=params, data_source=data_source, device=device)
        return self._call(self.store.mark_started, self.run_id, self.worker, params, data_source, device)

    def epoch(self, record: dict) -> bool:
        """False when this worker no longer holds the run (someone else ended it): stop training it."""
        self.records.append(record)
        return self._call(self.store.add_epoch, self.run_id, record, self.worker)

    def heartbeat(self, epoch_done: float | None) -> bool:
        return self._call(self.store.heartbeat, self.run_id, self.worker, epoch_done)

    def save_weights(self, blob: bytes, best_epoch: int | None) -> str:
        """Write the model file; with `best_epoch`, record it as the run's best so far (an interrupted run
        keeps it). "" when saved, else why not: a full disk must not end the run."""
        try:
            atomic_write_bytes(self.weights_path, blob)
        except OSError as exc:
            return f"the model could not be saved ({exc.strerror or exc})"
        if best_epoch is not None:
            self.saved_epoch = best_epoch
            self._call(self.store.set_best, self.run_id, self.worker, best_epoch, str(self.weights_path))
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
        """End the run in the store and keep its record beside its model; when the store failed under the
        run, keep it on disk only (`keep`), for the server to bring back."""
        if not self.problem:
            try:
                done = self._call(
                    self.store.finish,
                    self.run_id,
                    status,
                    reason,
                    summary,
                    str(self.weights_path) if weights else None,
                    worker=self.worker,
                    preds_path=str(self.preds_path) if preds else None,
                )
            except STORE_ERRORS:
                pass
            else:
                if done:
                    try:
                        salvage.write_sidecar(self.store.models_dir, self.store.get_run(self.run_id) or {},
                                              self.store.epochs(self.run_id))  # fmt: skip
                    except (*STORE_ERRORS, KeyError):
                        pass  # the record is in the store; a sidecar is only the spare
                return done
        return self.keep(status, reason, preds)

    def keep(self, status: str, reason: str, preds: bool = False) -> bool:
        """The run as this worker knows it, beside its model file: status (a run cut short by the store's
        failure is interrupted), curve, and the best epoch the model file holds, with that epoch's numbers."""
        if "config" not in self.run:
            return False  # a link that never read the run's record (a Ray host's, one message long) has nothing to keep
        if status == "cancelled" or status in ("queued", "running"):
            status = "interrupted"
        why = f"{self.problem.rstrip('.')}; the curve so far and the model file are kept"
        run = dict(self.run, status=status, reason="; ".join(filter(None, [reason, why])), finished=time.time())
        run.update(worker=self.worker, stop_requested=0, heartbeat=None)
        best = next((r for r in self.records if r.get("epoch") == self.saved_epoch), None)
        if best is not None and self.weights_path.exists():
            metrics = best.get("metrics") or {}
            run.update(weights_path=str(self.weights_path), weights_epoch=self.saved_epoch, best=metrics)
            run.update(best_epoch=self.saved_epoch, best_avg=best.get("avg_acc"))
            if preds and self.preds_path.exists():
                run["preds_path"] = str(self.preds_path)
        else:
            run.update(weights_path=None, weights_epoch=None, best_epoch=None, best={}, best_avg=None)
        return salvage.write_sidecar(self.store.models_dir, run, self.records)

    def stop_requested(self) -> bool:
        return self._call(self.store.stop_requested, self.run_id)

    # Fair share, local pool only (mtl_core/jobs/worker.py `_StopCheck`): a Ray task's link has neither.
    def yield_requested(self) -> bool:
        return self._call(self.store.yield_requested, self.run_id)

    def paused(self, on: bool) -> bool:
        return self._call(self.store.set_paused, self.run_id, self.worker, on)
