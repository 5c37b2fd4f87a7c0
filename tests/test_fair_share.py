"""Fair share of the workers: a long run pauses in place so that another student's run can start.

The store picks the run to pause and keeps the flags (RunStore.request_yield / resume_paused), the
worker holds a paused run between two batches (worker._StopCheck), and the job runner ties them
together (JobRunner.share_workers)."""

import sqlite3
import threading
import time

import pytest
from waiting import wait_for  # tests/waiting.py

import mtl_core.jobs.worker as worker
from mtl_core.config import TrainConfig
from mtl_core.jobs.runner import JobRunner, RunnerSettings

CFG = TrainConfig.preset("hard", epochs=1, data="synthetic").to_dict()


def _trained_for(store, run_id: str, seconds: float) -> None:
    """Pretend the run started `seconds` ago."""
    db = sqlite3.connect(store.path)
    with db:
        db.execute("UPDATE runs SET started=? WHERE id=?", (time.time() - seconds, run_id))
    db.close()


def _start(store, owner: str, trained_s: float) -> str:
    """A run of `owner`, claimed by a worker of its own and trained for `trained_s` so far."""
    run_id = store.create_run(CFG, owner=owner)
    assert store.claim_next(f"w-{run_id}") == run_id
    _trained_for(store, run_id, trained_s)
    return run_id


def _flags(store, run_id: str) -> tuple:
    run = store.get_run(run_id)
    return run["yield_requested"] is not None, run["pause_reason"]


def test_the_run_paused_is_the_longest_one_of_the_student_with_most_running(store):
    a_old, a_new, b_oldest = _start(store, "a", 300), _start(store, "a", 100), _start(store, "b", 900)
    assert store.request_yield(min_run_s=20, max_paused=2) is None  # nobody waits
    waiting = store.create_run(CFG, owner="c")
    assert store.request_yield(min_run_s=20, max_paused=2) == a_old
    assert _flags(store, a_old) == (True, "paused so another student's run could start; it resumes by itself")
    assert not _flags(store, a_new)[0] and not _flags(store, b_oldest)[0]
    state = store.share_state()
    assert (state.training, state.paused, state.waiting) == (2, 1, 1)
    assert state.holders == {f"w-{r}" for r in (a_old, a_new, b_oldest)}
    # The paused run still counts as a's: the slot it gave up goes to c, never back to a.
    store.create_run(CFG, owner="a")
    assert store.claim_next("extra", slots=3) == waiting
    assert store.request_yield(min_run_s=20, max_paused=2) is None  # c has a run now: nobody waits


def test_a_short_run_is_never_paused(store):
    young = _start(store, "a", 5)
    store.create_run(CFG, owner="b")
    assert store.request_yield(min_run_s=20, max_paused=1) is None
    assert not _flags(store, young)[0]
    _trained_for(store, young, 25)
    assert store.request_yield(min_run_s=20, max_paused=1) == young


def test_time_spent_paused_is_not_training_time_and_the_paused_count_is_capped(store):
    run = _start(store, "a", 40)
    other = _start(store, "b", 30)
    db = sqlite3.connect(store.path)
    with db:  # 25 of its 40 s were spent paused earlier: it has trained 15 s, under the minimum
        db.execute("UPDATE runs SET paused_seconds=25 WHERE id=?", (run,))
    db.close()
    store.create_run(CFG, owner="c")
    assert store.request_yield(min_run_s=20, max_paused=1) == other
    store.create_run(CFG, owner="d")
    assert store.request_yield(min_run_s=0, max_paused=1) is None  # one paused already: the cap


def test_a_worker_records_its_pause_and_slots_bound_what_trains(store):
    a = _start(store, "a", 60)
    b = store.create_run(CFG, owner="b")
    assert store.claim_next("w2", slots=1) is None  # one slot, and a trains in it
    assert store.request_yield(min_run_s=20, max_paused=1) == a and store.yield_requested(a)
    before = store.version()
    assert store.set_paused(a, f"w-{a}", True) and store.get_run(a)["paused_since"] is not None
    assert store.version() > before  # pages redraw to say it is paused
    assert not store.set_paused(a, "someone else", False)  # guarded by the worker's token, like every write
    assert store.claim_next("w2", slots=1) == b  # the paused run no longer holds the slot
    assert store.count_training() == 1 and store.count_running() == 2
    assert store.resume_paused(slots=1) == []  # b trains in the only slot
    store.finish(b, "finished", worker="w2")
    assert store.resume_paused(slots=1) == [a] and not store.yield_requested(a)
    time.sleep(0.05)
    assert store.set_paused(a, f"w-{a}", False)
    run = store.get_run(a)
    assert run["paused_since"] is None and run["paused_seconds"] >= 0.05 and run["pause_reason"] == ""


def test_resume_goes_oldest_paused_first_and_only_into_free_slots(store):
    runs = [_start(store, owner, 60) for owner in ("a", "b", "c")]
    for owner in ("x", "y"):
        store.create_run(CFG, owner=owner)
        time.sleep(0.01)
        store.request_yield(min_run_s=0, max_paused=3)
    paused = [r for r in runs if store.yield_requested(r)]
    assert len(paused) == 2 and store.count_training() == 1
    assert store.resume_paused(slots=1) == []
    assert store.resume_paused(slots=2) == paused[:1]
    assert store.resume_paused(slots=5) == paused[1:]


# -- the worker's side: _StopCheck holds the run between two batches -----------------------------


class _Link:
    """A run link whose flags the test sets."""

    def __init__(self) -> None:
        self.stop, self.pause, self.calls = False, False, []

    def stop_requested(self) -> bool:
        return self.stop

    def yield_requested(self) -> bool:
        return self.pause

    def paused(self, on: bool) -> bool:
        self.calls.append(on)
        return True


@pytest.fixture
def terminating(monkeypatch):
    """The worker's "server gone" event, fresh for each test."""
    event = threading.Event()
    monkeypatch.setattr(worker, "_terminating", event)
    return event


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_a_paused_run_waits_and_its_pause_does_not_count_against_the_time_limit(terminating):
    link = _Link()
    stop = worker._StopCheck(link, max_seconds=0.6)
    link.pause = True
    t, out = _in_thread(stop)
    time.sleep(1.0)  # longer than the whole time limit
    assert t.is_alive() and link.calls == [True]
    link.pause = False
    t.join(2)
    assert out == [False] and link.calls == [True, False]
    assert not stop() and not stop.timed_out  # the second that passed paused is not the job's
    assert 1.0 <= stop.take_paused() < 1.6 and stop.take_paused() == 0.0 and stop.paused_s >= 1.0


def test_stop_and_the_server_going_away_end_a_paused_run(terminating):
    link = _Link()
    link.pause = True
    t, out = _in_thread(worker._StopCheck(link, 0))
    time.sleep(0.3)
    link.stop = True
    t.join(1)
    assert out == [True] and link.calls == [True, False]

    link = _Link()
    link.pause = True
    t, out = _in_thread(worker._StopCheck(link, 0))
    time.sleep(0.3)
    terminating.set()
    t.join(1)
    assert out == [True] and link.calls == [True, False]


# -- the job runner, with real worker processes ----------------------------------------------------


def _runner(store, **kw) -> JobRunner:
    return JobRunner(store, settings=RunnerSettings(workers=1, yield_after_s=1.5, **kw))


def test_a_short_run_starts_at_once_beside_a_long_one_which_then_goes_on_where_it_was(store):
    runner = _runner(store, max_job_s=600)
    try:
        assert runner.wait_ready(60)
        # Far more epochs than the test waits for, so that the long run cannot end before the short one
        # however slow or quick the machine is; it is stopped once it has gone on after its pause.
        long = runner.submit(TrainConfig.preset("hard", epochs=500, batch_size=8, data="synthetic"), owner="a")
        assert wait_for(lambda: len(store.epochs(long)) >= 2, timeout=180)  # (a first run may build C++)
        time.sleep(max(0.0, 1.6 - (time.time() - store.get_run(long)["started"])))
        short = runner.submit(TrainConfig.preset("hard", epochs=1, data="synthetic"), owner="b")
        assert wait_for(lambda: store.get_run(short)["status"] == "finished", timeout=60), (
            {k: store.get_run(short)[k] for k in ("status", "reason", "created", "started")},
            {k: store.get_run(long)[k] for k in ("status", "yield_requested", "paused_since")},
            time.time(),
        )
        b = store.get_run(short)
        # It waited for a worker process to start (a few seconds on an idle machine), not for the long run.
        assert b["started"] - b["created"] < 30, "the short run waited for the long one"
        a = store.get_run(long)
        assert a["status"] == "running", a
        assert a["paused_seconds"] > 0 or a["paused_since"] is not None, "the long run was never paused"
        # Once the short run is over, the long one goes on: it leaves its pause and trains more epochs.
        assert wait_for(lambda: store.get_run(long)["paused_since"] is None, timeout=20), store.get_run(long)
        done = len(store.epochs(long))
        assert wait_for(lambda: len(store.epochs(long)) >= done + 2, timeout=60), store.get_run(long)
        runner.stop(long)
        assert wait_for(lambda: store.get_run(long)["status"] == "cancelled", timeout=10), store.get_run(long)
        a = store.get_run(long)
        # It was paused for the whole of the short run, then went on where it was: every epoch once.
        assert a["paused_seconds"] >= b["finished"] - b["started"] > 0
        records = store.epochs(long)
        assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
        # The pause is in no epoch's seconds, nor in the run's training time.
        assert max(r["seconds"] for r in records) < a["paused_seconds"]
        assert a["train_seconds"] < a["finished"] - a["started"] - a["paused_seconds"] + 0.5
        assert a["train_seconds"] >= sum(r["seconds"] for r in records) - 0.01
        assert wait_for(lambda: len(runner.worker_pids()) == 1, timeout=10)  # the extra worker is gone
    finally:
        runner.shutdown()


def test_stop_ends_a_paused_run_and_shutdown_interrupts_one(store):
    runner = _runner(store)
    try:
        long = TrainConfig.preset("hard", epochs=500, batch_size=8, data="synthetic")
        a = runner.submit(long, owner="a")
        assert wait_for(lambda: len(store.epochs(a)) >= 1, timeout=180)  # (a first run may build C++)
        b = runner.submit(long, owner="b")
        assert wait_for(lambda: store.get_run(a)["paused_since"] is not None, timeout=20), store.get_run(a)
        assert wait_for(lambda: len(store.epochs(b)) >= 1, timeout=30)
        runner.stop(a)
        assert wait_for(lambda: store.get_run(a)["status"] == "cancelled", timeout=3, every=0.05)
        assert store.get_run(a)["weights_path"]  # its best epoch so far is kept, as for any Stop
        # c waits, the first worker is idle but the only slot trains b: b pauses, and c takes the slot.
        c = runner.submit(long, owner="c")
        assert wait_for(lambda: store.get_run(b)["paused_since"] is not None, timeout=20), store.get_run(b)
        assert wait_for(lambda: store.get_run(c)["status"] == "running", timeout=10)
        runner.shutdown()
        for rid in (b, c):
            run = store.get_run(rid)
            assert run["status"] == "interrupted" and "shut the worker down" in run["reason"], run
    finally:
        runner.shutdown()


def test_the_monitor_says_a_paused_run_goes_on_by_itself(store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import dashboard.monitor

    monkeypatch.setattr(dashboard.monitor, "get_store", lambda: store)  # no server runner for one line

    def page():
        from dashboard.monitor import status_ui

        run = {"id": "r", "status": "running", "config": {"epochs": 10}, "yield_requested": 1.0}
        status_ui(run, [])
        status_ui(run | {"yield_requested": None}, [])

    at = AppTest.from_function(page).run()
    assert not at.exception, [e.value for e in at.exception]
    (info,) = at.info  # only the paused run says so
    assert info.value == "Paused so another student's run could start; it resumes by itself where it stopped."


def test_the_sidebar_counts_a_paused_run_apart_from_the_running_ones(store):
    from dashboard.sidebar import jobs_sentence
    from mtl_core.store.runs import ACTIVE

    _start(store, "a", 300)
    _start(store, "b", 100)
    store.create_run(CFG, owner="c")
    assert jobs_sentence(store.list_runs(statuses=ACTIVE)) == "Jobs on this server: 2 running, 1 queued"
    assert store.request_yield(min_run_s=20, max_paused=1)
    assert jobs_sentence(store.list_runs(statuses=ACTIVE)) == (
        "Jobs on this server: 1 running, 1 paused for others, 1 queued"
    )
