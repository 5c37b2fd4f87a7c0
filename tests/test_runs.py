"""The SQLite run store: round trip, claiming, stopping, per-owner listing."""

import sqlite3

import pytest

from mtl_core.config import TrainConfig


def test_round_trip(store):
    cfg = TrainConfig.preset("hard", data="synthetic").to_dict()
    rid = store.create_run(cfg, owner="alice", label="first")
    run = store.get_run(rid)
    assert run["status"] == "queued" and run["config"] == cfg and run["owner"] == "alice"
    assert store.claim_next("w1", 123) == rid and store.claim_next("w2", 124) is None
    store.mark_started(rid, "w1", 52386, "synthetic", "cpu")
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
    assert store.claim_next("w1") == b
    store.request_stop(b)  # running: the worker sees the flag
    assert store.stop_requested(b) and store.get_run(b)["status"] == "running"
    store.delete_run(a)
    assert store.get_run(a) is None and store.count_active() == 1


def test_status_changes_are_guarded_by_the_worker_that_holds_the_run(store):
    rid = store.create_run(TrainConfig.preset("hard").to_dict())
    assert store.claim_next("w1") == rid
    assert store.interrupt_worker("w1", "its worker process died") == [rid]
    # The old worker comes back late: none of its writes may change the interrupted run.
    assert not store.add_epoch(rid, {"epoch": 1}, worker="w1")
    assert not store.heartbeat(rid, "w1") and not store.set_best(rid, "w1", 1, "/tmp/x")
    assert not store.finish(rid, "finished", worker="w1")
    run = store.get_run(rid)
    assert run["status"] == "interrupted" and store.epochs(rid) == []
    # A final status is final even without a worker token (fail_orphans used to overwrite finished runs).
    assert not store.finish(rid, "failed", "late")
    assert store.get_run(rid)["status"] == "interrupted"


def test_stale_heartbeats_interrupt_only_stale_runs(store):
    cfg = TrainConfig.preset("hard").to_dict()
    a, b = store.create_run(cfg), store.create_run(cfg)
    store.claim_next("wa"), store.claim_next("wb")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET heartbeat = heartbeat - 60 WHERE id=?", (a,))
    assert store.heartbeat(b, "wb")
    assert store.interrupt_stale(10.0) == [a]
    assert store.get_run(a)["status"] == "interrupted" and store.get_run(b)["status"] == "running"
    assert "heartbeat" in store.get_run(a)["reason"]


def test_a_late_heartbeat_from_a_worker_that_still_runs_is_waited_for(store):
    cfg = TrainConfig.preset("hard").to_dict()
    slow, dead = store.create_run(cfg), store.create_run(cfg)
    assert store.claim_next("w-slow") == slow and store.claim_next("w-dead") == dead
    with sqlite3.connect(store.path) as db:  # neither has beaten for 60 s
        db.execute("UPDATE runs SET heartbeat = heartbeat - 60")
    assert store.interrupt_stale(10.0, alive=frozenset({"w-slow"}), alive_age_s=120.0) == [dead]
    assert store.get_run(slow)["status"] == "running"  # its process runs: a loaded machine, not a lost worker
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET heartbeat = heartbeat - 100 WHERE id=?", (slow,))
    assert store.interrupt_stale(10.0, alive=frozenset({"w-slow"}), alive_age_s=120.0) == [slow]  # hung: 160 s


def test_round_robin_across_owners(store):
    cfg = TrainConfig.preset("hard").to_dict()
    greedy = [store.create_run(cfg, owner="greedy") for _ in range(4)]
    late = store.create_run(cfg, owner="late")
    first = store.claim_next("w1")
    second = store.claim_next("w2")  # greedy already has one running: the other owner goes next
    assert (first, second) == (greedy[0], late)
    store.finish(first, "finished"), store.finish(second, "finished")
    other = store.create_run(cfg, owner="late")
    # Nobody is running now; "late" had a job started more recently than "greedy", so greedy is next.
    assert store.claim_next("w1") == greedy[1]
    assert store.claim_next("w2") == other


def test_caps_are_checked_in_the_inserting_transaction(store):
    from mtl_core.store.runs import Limits, QueueFull

    cfg = TrainConfig.preset("hard").to_dict()
    limits = Limits(per_owner=3, per_client=4, total=5)
    store.create_runs([cfg, cfg], owner="a", client="10.0.0.1", limits=limits)
    with pytest.raises(QueueFull, match="limit 3"):  # all or none: two more would make four
        store.create_runs([cfg, cfg], owner="a", client="10.0.0.1", limits=limits)
    assert len(store.list_runs(owner="a")) == 2
    store.create_runs([cfg, cfg], owner="b", client="10.0.0.1", limits=limits)  # a new tab, same computer
    with pytest.raises(QueueFull, match="this computer"):
        store.create_runs([cfg], owner="c", client="10.0.0.1", limits=limits)
    store.create_runs([cfg], owner="d", client="10.0.0.2", limits=limits)
    with pytest.raises(QueueFull, match="server's job queue is full"):
        store.create_runs([cfg], owner="e", client="10.0.0.3", limits=limits)


def test_runs_over_the_cap_wait_their_turn_and_join_the_queue_as_earlier_ones_end(store):
    from mtl_core.store.runs import Limits

    cfg = TrainConfig.preset("hard").to_dict()
    limits = Limits(per_owner=2, per_client=3, total=5)
    points = [(f"point {i}", dict(cfg, seed=i)) for i in range(5)]
    turn_id, now = store.queue_in_turn(points, owner="a", client="10.0.0.1", limits=limits)
    assert [store.get_run(i)["label"] for i in now] == ["point 0", "point 1"]
    assert store.top_up(limits) == []  # no room until one of a's runs ends
    (turn,) = store.waiting_turns("a")
    assert turn["waiting"] == ["point 2", "point 3", "point 4"] and turn["runs"] == now
    store.create_runs([cfg], owner="b", client="10.0.0.1", limits=limits)  # another tab of that computer
    store.finish(now[0], "finished", "", {}, None)
    (third,) = store.top_up(limits)  # the computer's cap of 3 leaves room for one
    assert store.get_run(third)["label"] == "point 2" and store.get_run(third)["config"]["seed"] == 2
    assert store.get_run(third)["owner"] == "a" and store.get_run(third)["client"] == "10.0.0.1"
    store.request_stop(now[1])
    store.finish(now[1], "cancelled", "stopped", {}, None)
    (fourth,) = store.top_up(limits)
    assert store.get_run(fourth)["label"] == "point 3"
    assert store.waiting_turns("b") == [] and len(store.waiting_turns()) == 1
    store.cancel_turn(turn_id)  # the waiting point 4 is dropped; the queued ones stay
    assert store.waiting_turns() == [] and store.top_up(Limits()) == []
    assert store.turn(turn_id) == {"id": turn_id, "owner": "a", "created": turn["created"], "open": False,
                                   "waiting": ["point 4"], "runs": [*now, third, fourth]}  # fmt: skip
    assert store.open_sweeps() == []  # a waiting list is no class sweep
    # Every point queued: the list closes by itself.
    done_id, _ = store.queue_in_turn(points[:1], owner="c", limits=limits)
    assert store.turn(done_id)["open"] is False


def test_parallel_submits_cannot_pass_a_cap(store, monkeypatch):
    """Eight processes submit at once against a cap of three: exactly three get in."""
    import multiprocessing as mp
    import sys
    import types

    # A spawned child first runs the parent's __main__ file; after an AppTest that is app.py. A bare
    # __main__ keeps the children to this test's own function.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    with mp.get_context("spawn").Pool(8) as pool:
        results = pool.starmap(_submit_one, [(str(store.path),)] * 8)
    assert sorted(results) == [False] * 5 + [True] * 3
    assert store.count_active() == 3


def _submit_one(path: str) -> bool:
    from mtl_core.store.runs import Limits, QueueFull, RunStore

    try:
        RunStore(path).create_runs([TrainConfig.preset("hard").to_dict()], owner="same", limits=Limits(3, 8, 32))
    except QueueFull:
        return False
    return True


def test_closed_tabs_lose_their_queued_runs_after_the_grace_period(store):
    from mtl_core.store.runs import Limits

    cfg = TrainConfig.preset("hard").to_dict()
    gone, here, cli = store.create_run(cfg, owner="gone"), store.create_run(cfg, owner="here"), store.create_run(cfg)
    store.touch_owner("gone"), store.touch_owner("here")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE owners SET seen = seen - 3600 WHERE owner='gone'")
    waiting, _ = store.queue_in_turn([("later", cfg)] * 3, owner="gone", limits=Limits(per_owner=2))
    kept, _ = store.queue_in_turn([("later", cfg)] * 3, owner="here", limits=Limits(per_owner=2))
    (first_of_gone,) = store.turn(waiting)["runs"]
    assert sorted(store.cancel_abandoned(600)) == sorted([gone, first_of_gone])
    assert [store.get_run(r)["status"] for r in (gone, here, cli)] == ["cancelled", "queued", "queued"]
    assert [t["id"] for t in store.waiting_turns()] == [kept]  # a closed tab's waiting runs are dropped too


def test_the_change_counter_moves_with_changes_but_not_heartbeats(store):
    v0 = store.version()
    rid = store.create_run(TrainConfig.preset("hard").to_dict())
    v1 = store.version()
    store.claim_next("w")
    v2 = store.version()
    assert store.within_epoch(rid) is None  # nothing reported yet
    store.heartbeat(rid, "w")
    store.heartbeat(rid, "w", epoch_done=0.4)  # how far the epoch is travels with the beat...
    assert v0 < v1 < v2 == store.version()  # ...and is no change a page must redraw for
    assert store.within_epoch(rid) == pytest.approx(0.4)
    store.heartbeat(rid, "w")  # a beat without progress keeps the last one
    assert store.within_epoch(rid) == pytest.approx(0.4)
    assert not store.heartbeat(rid, "someone else", epoch_done=0.9)  # only the run's worker reports
    assert store.within_epoch(rid) == pytest.approx(0.4)
    store.add_epoch(rid, {"epoch": 1}, worker="w")
    assert store.version() > v2


def test_a_corrupt_store_is_moved_aside_not_overwritten(tmp_path):
    from mtl_core.store.runs import RunStore

    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = RunStore(path)
    assert "moved aside" in store.notice and store.list_runs() == []
    aside = list(tmp_path.glob("runs.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not a database" * 100


def test_a_truncated_store_is_moved_aside_and_said(tmp_path):
    from mtl_core.store.runs import RunStore

    path = tmp_path / "runs.sqlite"
    RunStore(path).create_run(TrainConfig.preset("hard").to_dict())
    path.write_bytes(b"")
    (tmp_path / "runs.sqlite-wal").unlink(missing_ok=True)
    store = RunStore(path)
    assert "empty (0 bytes)" in store.notice
    assert list(tmp_path.glob("runs.sqlite.damaged-*"))


def test_a_store_damaged_in_the_middle_is_found_by_the_check(tmp_path):
    from mtl_core.store.runs import RunStore

    path = tmp_path / "runs.sqlite"
    s = RunStore(path)
    for _ in range(50):
        s.create_run(TrainConfig.preset("hard").to_dict())
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(path.read_bytes())
    raw[4096:] = b"\xff" * (len(raw) - 4096)  # keep the header page, scribble over every other page
    path.write_bytes(bytes(raw))
    store = RunStore(path)
    assert "moved aside" in store.notice
    with pytest.raises(sqlite3.DatabaseError):
        aside = [p for p in tmp_path.glob("runs.sqlite.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
        RunStore(aside[0], repair=False)  # workers never repair


def test_an_older_store_without_the_progress_column_reads_as_no_progress(tmp_path):
    from mtl_core.store.runs import RunStore

    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    rid = store.create_run(TrainConfig.preset("hard").to_dict())
    store.claim_next("w")
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE runs DROP COLUMN epoch_done")  # as a store from before the column
    con.commit()
    con.close()
    assert store.within_epoch(rid) is None


def test_the_class_overview_changes_with_what_run_lists_show_and_not_with_epochs(store):
    """RunStore.overview is what the teacher's live page compares: a new run, a start, a Stop, a rename,
    a delete change it; an epoch (the watched run's own panel follows those) does not."""
    cfg = TrainConfig.preset("hard", data="synthetic").to_dict()
    seen = [store.overview()]
    rid = store.create_run(cfg, owner="alice", label="first")
    seen.append(store.overview())
    store.claim_next("w1", 123)
    seen.append(store.overview())
    store.add_epoch(rid, {"epoch": 1, "avg_acc": 0.5, "train_loss": {"even": 0.3}})
    assert store.overview() == seen[-1]  # an epoch alone
    store.request_stop(rid, by_teacher=True)
    seen.append(store.overview())
    store.set_owner_name("alice", "Alice")
    seen.append(store.overview())
    store.delete_run(rid)
    seen.append(store.overview())
    assert len(set(seen[:-1])) == 5 and seen[-1] == seen[0] == ()  # each step a change; deleted: as before
    assert ("first", "Alice") == (seen[-2][0][2], seen[-2][0][5])
