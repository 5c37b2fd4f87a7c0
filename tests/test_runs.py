"""The SQLite run store: round trip, claiming, stopping, per-owner listing."""

import sqlite3

from mtl_core.config import TrainConfig


def test_round_trip(store):
    cfg = TrainConfig.preset("hard", data="synthetic").to_dict()
    rid = store.create_run(cfg, owner="alice", label="first")
    run = store.get_run(rid)
    assert run["status"] == "queued" and run["config"] == cfg and run["owner"] == "alice"
    assert store.claim_next(pid=123) == rid and store.claim_next(pid=124) is None
    store.mark_started(rid, 52386, "synthetic", "cpu")
    store.add_epoch(rid, {"epoch": 1, "avg_acc": 0.5, "train_loss": {"even": float("nan")}})
    store.add_epoch(rid, {"epoch": 2, "avg_acc": 0.75, "train_loss": {"even": 0.1}})
    summary = {"train_seconds": 1.5, "best_epoch": 2, "best_metrics": {"even": {"acc": 0.75}}, "best_avg": 0.75}
    store.finish(rid, "finished", "", summary, "/tmp/x.safetensors")
    run = store.get_run(rid)
    assert (run["status"], run["params"], run["best_epoch"], run["best_avg"]) == ("finished", 52386, 2, 0.75)
    assert run["best"] == {"even": {"acc": 0.75}} and run["weights_path"] == "/tmp/x.safetensors"
    epochs = store.epochs(rid)
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[0]["train_loss"]["even"] is None  # NaN -> null
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_owner_listing_stop_and_delete(store):
    cfg = TrainConfig.preset("hard").to_dict()
    a, b = store.create_run(cfg, owner="a"), store.create_run(cfg, owner="b")
    assert [r["id"] for r in store.list_runs(owner="a")] == [a]
    assert {r["id"] for r in store.list_runs()} == {a, b}
    store.request_stop(a)  # queued: cancelled at once, never claimed
    assert store.get_run(a)["status"] == "cancelled"
    assert store.claim_next(pid=1) == b
    store.request_stop(b)  # running: the worker sees the flag
    assert store.stop_requested(b) and store.get_run(b)["status"] == "running"
    store.delete_run(a)
    assert store.get_run(a) is None and store.count_active() == 1


def test_orphaned_running_runs_are_marked_failed(store):
    rid = store.create_run(TrainConfig.preset("hard").to_dict())
    store.claim_next(pid=2**22 + 12345)  # no such process
    assert store.fail_orphans(alive_pids=set()) == 1
    assert "worker stopped" in store.get_run(rid)["reason"]
