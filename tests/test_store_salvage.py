"""No run is ever lost: a damaged store is salvaged row by row, a store lost under a running run is never
silently recreated, the run is kept beside its model, and `python -m mtl_core runs` reads any store."""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from mtl_core.config import TrainConfig
from mtl_core.store import salvage
from mtl_core.store.runs import PUBLIC_NOTICE, RunStore, StoreLost, StoreUnavailable

ROOT = Path(__file__).resolve().parent.parent
N_RUNS = 30


def _finished_store(path: Path) -> list[str]:
    """A store of N_RUNS finished runs, three epochs and a model file each, spread over many pages."""
    store = RunStore(path)
    cfg = TrainConfig.preset("hard", epochs=3, data="synthetic").to_dict()
    store.models_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(N_RUNS):
        rid = store.create_run(cfg, owner=f"{i % 3:012d}", label=f"run-{i:03d}-" + "x" * 300)
        assert store.claim_next("w") == rid
        for e in (1, 2, 3):
            store.add_epoch(rid, {"epoch": e, "avg_acc": 0.5 + e / 10, "pad": "y" * 200}, worker="w")
        weights, preds = store.models_dir / f"{rid}.safetensors", store.models_dir / f"{rid}.preds.safetensors"
        weights.write_bytes(b"weights " + rid.encode())
        preds.write_bytes(b"preds " + rid.encode())
        summary = {"best_epoch": 3, "best_avg": 0.8, "best_metrics": {"even": {"acc": 0.8}}}
        store.finish(rid, "finished", "", summary, str(weights), worker="w", preds_path=str(preds))
        ids.append(rid)
    store.touch_owner(f"{1:012d}", "Ada")
    store.set_setting("gallery", True)
    with closing(sqlite3.connect(path)) as db:  # closed now: a connection left to the collector deletes the WAL later
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, as after a quiet spell
    return ids


def _scribble_over_the_page_of(path: Path, marker: bytes) -> bytes:
    """Random bytes over the one page that holds `marker` (a run's label, in the middle of the table)."""
    with closing(sqlite3.connect(path)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    raw = bytearray(path.read_bytes())
    page = raw.find(marker) // page_size
    assert 1 < page < len(raw) // page_size - 1
    hit = bytes(raw[page * page_size : (page + 1) * page_size])
    raw[page * page_size : (page + 1) * page_size] = random.Random(0).randbytes(page_size)
    path.write_bytes(bytes(raw))
    return hit


@pytest.fixture
def damaged(tmp_path):
    """(path, every run id, the ids whose rows were on the scribbled page)."""
    path = Path(os.environ["MTL_HOME"]) / "runs.sqlite"
    ids = _finished_store(path)
    hit = _scribble_over_the_page_of(path, b"run-015-")
    lost = {rid for i, rid in enumerate(ids) if f"run-{i:03d}-".encode() in hit}
    assert 0 < len(lost) < 10 and ids[-1] not in lost  # runs after the damaged page exist to be found
    return path, ids, lost


def test_a_damaged_store_gives_every_readable_row_to_the_new_one(damaged):
    path, ids, lost = damaged
    before = path.read_bytes()
    assert not salvage.intact(path)
    store = RunStore(path)  # what the server does on start (and on recovering while it runs)
    runs = {r["id"]: r for r in store.list_runs()}
    assert set(runs) == set(ids) - lost  # those behind the bad page too: found by rowid
    for rid, run in runs.items():
        assert run["status"] == "finished" and run["best_epoch"] == 3
        assert [e["epoch"] for e in store.epochs(rid)] == [1, 2, 3]
        assert Path(run["weights_path"]).read_bytes() == b"weights " + rid.encode()  # still valid paths
        assert Path(run["preds_path"]).read_bytes() == b"preds " + rid.encode()
    assert store.owner_names()[f"{1:012d}"] == "Ada" and store.setting("gallery")
    (aside,) = [p for p in path.parent.glob("runs.sqlite.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == before  # kept as it was, for inspection
    n = len(ids) - len(lost)
    assert f"{n} runs were recovered" in store.notice and aside.name in store.notice
    assert str(aside.parent) in store.notice and "sqlite" not in store.notice.lower().replace(".sqlite", "")
    assert store.public_notice == PUBLIC_NOTICE and aside.name not in store.public_notice


def test_runs_json_lists_a_damaged_store_without_touching_it(damaged, capsys):
    from mtl_core.cli import main

    path, ids, lost = damaged
    before = sorted(os.listdir(path.parent)), path.read_bytes()
    assert main(["runs", "--json", "-"]) == 0
    out = capsys.readouterr()
    listed = json.loads(out.out)
    assert {r["id"] for r in listed} == set(ids) - lost
    assert all(set(r) >= {"id", "status", "model", "tasks", "best_avg", "student", "created"} for r in listed)
    assert {r["student"] for r in listed} == {"", "Ada"} and all(r["tasks"] for r in listed)
    assert "damaged" in out.err
    assert (sorted(os.listdir(path.parent)), path.read_bytes()) == before  # not moved, not written, no -shm
    assert main(["runs"]) == 0 and ids[-1] in capsys.readouterr().out  # the table


def test_runs_without_a_store_exits_non_zero_with_a_sentence(tmp_path):
    env = dict(os.environ, MTL_HOME=str(tmp_path / "nothing-here"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "mtl_core", "runs"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip().startswith("There is no run store") and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nothing-here").exists()  # listing creates nothing


def test_a_store_emptied_under_a_worker_is_never_recreated(tmp_path):
    path = tmp_path / "runs.sqlite"
    server = RunStore(path)
    rid = server.create_run(TrainConfig.preset("hard").to_dict())
    worker = RunStore(path, repair=False)
    assert worker.claim_next("w") == rid
    path.write_bytes(b"")  # truncated while the server runs
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreLost):
        worker.heartbeat(rid, "w")
    with pytest.raises(StoreLost):
        worker.claim_next("w")
    with pytest.raises(StoreLost):
        RunStore(path, repair=False)  # a respawned worker does not make a new store either
    assert path.stat().st_size == 0  # no schema written in place


def test_a_deleted_or_replaced_store_is_lost_to_a_worker(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).create_run(TrainConfig.preset("hard").to_dict())
    worker = RunStore(path, repair=False)
    other = RunStore(tmp_path / "other.sqlite")  # a valid store, but another one
    os.replace(other.path, path)
    with pytest.raises(StoreLost, match="replaced"):
        worker.list_runs()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreLost):
        worker.list_runs()
    assert not path.exists()  # never created again by a reader


def _train_in_process(store: RunStore, epochs: int, when_epoch=None) -> str:
    """Claim and train one synthetic run here (the worker's own code); `when_epoch(n)` runs after epoch n
    was recorded, to break the store at a chosen moment."""
    import mtl_core.jobs.worker as worker
    import mtl_core.store.run_link as run_link

    cfg = TrainConfig.preset("hard", epochs=epochs, batch_size=64, data="synthetic").to_dict()
    rid = store.create_run(cfg, owner="0123456789ab", label="kept")
    assert store.claim_next("w") == rid
    real_epoch = run_link.StoreLink.epoch

    def epoch(self, record):
        ok = real_epoch(self, record)
        if when_epoch is not None:
            when_epoch(record["epoch"])
        return ok

    run_link.StoreLink.epoch = epoch
    try:
        worker.execute_run(store, rid, worker._DataCache(), "w")
    finally:
        run_link.StoreLink.epoch = real_epoch
    return rid


def test_a_run_whose_store_is_truncated_mid_run_comes_back_interrupted(tmp_path):
    path = tmp_path / "runs.sqlite"
    server = RunStore(path)
    before = _train_in_process(server, 1)  # a finished run, kept beside its model as well as in the store

    def truncate(n):
        if n == 2:
            path.write_bytes(b"")
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)

    worker = RunStore(path, repair=False)
    rid = _train_in_process(worker, 50, truncate)
    assert path.stat().st_size == 0  # the worker made nothing in its place
    assert server.recover()  # what the server's supervisor does when it finds the store lost
    run = server.get_run(rid)
    assert run["status"] == "interrupted" and "curve so far" in run["reason"]
    assert [e["epoch"] for e in server.epochs(rid)] == [1, 2]
    assert run["weights_epoch"] == run["best_epoch"] and os.path.exists(run["weights_path"])
    assert server.get_run(before)["status"] == "finished" and len(server.epochs(before)) == 1
    assert "empty (0 bytes)" in server.notice
    assert "2 runs were brought back from the records kept beside their models" in server.notice


def _read_only(monkeypatch):
    """A store that can no longer be written. As root chmod changes nothing, so SQLite is told at its
    connect edge to open read-only, which it then enforces itself."""
    monkeypatch.setattr(RunStore, "_uri", lambda self, mode: f"{self.path.absolute().as_uri()}?mode=ro")


def test_a_store_gone_read_only_mid_run_ends_the_run_and_the_page_does_not_show_it_live(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("simulated for root; a user's read-only folder is covered in tests/test_faults.py")
    path = tmp_path / "runs.sqlite"
    server = RunStore(path)
    t0 = time.monotonic()
    rid = _train_in_process(server, 500, lambda n: n == 1 and _read_only(monkeypatch))
    assert time.monotonic() - t0 < 60  # it stopped training instead of running its 500 epochs
    assert server.get_run(rid)["status"] == "running"  # nobody could write its end...
    with pytest.raises(StoreUnavailable, match=r"cannot be written \(its folder is read-only\)"):
        server.request_stop(rid)  # ...and Stop says why it cannot be recorded
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        heartbeat = db.execute("SELECT heartbeat FROM runs WHERE id=?", (rid,)).fetchone()[0]
    monkeypatch.setattr(time, "time", lambda: heartbeat + 60)
    run = server.get_run(rid)
    assert run["status"] == "interrupted" and run["reason"] == "interrupted (the store cannot be written)"
    assert server.list_runs(statuses=("queued", "running")) == []
    side = json.loads((server.models_dir / f"{rid}.run.json").read_text())  # kept for the server to bring back
    assert side["run"]["status"] == "interrupted" and [e["epoch"] for e in side["epochs"]] == [1]
    assert side["run"]["weights_epoch"] == side["run"]["best_epoch"] == 1


def test_a_full_disk_never_offers_a_file_that_does_not_match_its_numbers(tmp_path, monkeypatch):
    import mtl_core.store.run_link
    from dashboard.state import has_model
    from mtl_core.checkpoint import atomic_write_bytes, load_model

    writes = []

    def full_after_the_first(path, payload):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write_bytes(path, payload)

    monkeypatch.setattr(mtl_core.store.run_link, "atomic_write_bytes", full_after_the_first)
    store = RunStore(tmp_path / "runs.sqlite")
    rid = _train_in_process(store, 4)
    run = store.get_run(rid)
    assert run["status"] == "finished" and "could not be saved" in run["reason"]
    assert run["best_epoch"] > 1, "the test needs a best epoch after the first"
    _, _, extra = load_model(run["weights_path"])
    assert run["weights_epoch"] == extra["best_epoch"] == 1  # what the file on disk holds
    assert not has_model(run)  # so neither the download nor the Draw page offers it


def test_workers_that_die_at_once_back_off_without_starting_over(store, monkeypatch):
    """A worker that cannot start at all (the store is fine: here the process exits at once) is retried
    after 2, 4, 8 ... s, never reset to fast retries because no worker is alive."""
    from mtl_core.jobs.runner import JobRunner, _Worker

    spawned = []

    def dies_at_once(self, extra=False):
        spawned.append(time.monotonic())
        proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)  # fmt: skip
        return _Worker(proc, f"t{len(spawned)}")

    monkeypatch.setattr(JobRunner, "_spawn", dies_at_once)
    runner = JobRunner(store)
    try:
        time.sleep(12)
        assert 2 <= len(spawned) <= 4, [round(t - spawned[0], 1) for t in spawned]
        gaps = [b - a for a, b in zip(spawned, spawned[1:])]
        assert all(b > a for a, b in zip(gaps, gaps[1:]))  # growing, never back to one a second
        assert runner.problem.startswith("Training is paused") and "in a row" in runner.problem
    finally:
        runner.shutdown()


def test_students_see_a_plain_sentence_and_the_teacher_what_happened(damaged):
    from streamlit.testing.v1 import AppTest

    from mtl_core.jobs.runner import shutdown_server_runners

    shutdown_server_runners()
    try:
        for teacher in (False, True):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
            at.query_params["u"] = "0123456789ab"
            if teacher:
                at.session_state["teacher"] = True
            at.switch_page("pages/train.py")
            at.run()
            assert not at.exception
            shown = " ".join(w.value for w in at.sidebar.warning)
            if teacher:
                assert "moved aside" in shown and "runs were recovered" in shown
            else:
                assert shown == PUBLIC_NOTICE
            said = " ".join(str(e.value) for e in [*at.error, *at.warning, *at.sidebar.warning, *at.sidebar.error])
            assert "btree" not in said.lower() and "malformed" not in said.lower()
    finally:
        shutdown_server_runners()


def test_a_store_emptied_under_a_training_server_loses_no_run(store):
    """The whole path with a real worker process: the store is truncated to 0 bytes mid-run; the server
    renews it, the finished run and the running one (interrupted, curve and model kept) are back in it,
    and the pool trains again, without a crash loop."""
    from waiting import wait_for

    from mtl_core.jobs.runner import JobRunner

    runner = JobRunner(store)
    try:
        done = runner.submit(TrainConfig.preset("hard", epochs=1, data="synthetic"))
        long = runner.submit(TrainConfig.preset("hard", epochs=500, batch_size=8, data="synthetic"))
        assert wait_for(lambda: len(store.epochs(long)) >= 2, timeout=120)
        store.path.write_bytes(b"")
        for suffix in ("-wal", "-shm"):
            Path(str(store.path) + suffix).unlink(missing_ok=True)

        def back() -> bool:
            try:
                return store.get_run(long)["status"] == "interrupted"
            except (StoreUnavailable, sqlite3.DatabaseError, TypeError):
                # Not recovered yet (emptied, or malformed while the old WAL went back into it: the pages
                # and the runner recover on that error), or recovered before the worker kept the run.
                return False

        assert wait_for(back, timeout=60), store.notice
        run = store.get_run(long)
        assert len(store.epochs(long)) >= 2 and "curve so far" in run["reason"]
        assert run["weights_epoch"] == run["best_epoch"] and os.path.exists(run["weights_path"])
        assert store.get_run(done)["status"] == "finished" and len(store.epochs(done)) == 1
        # 0 bytes, or damaged when a connection wrote the old WAL back into the emptied file: kept either way
        assert "moved aside" in store.notice and list(store.path.parent.glob("runs.sqlite.damaged-*"))
        after = runner.submit(TrainConfig.preset("hard", epochs=1, data="synthetic"))
        assert wait_for(lambda: store.get_run(after)["status"] == "finished", timeout=90)
        assert runner.problem == ""
    finally:
        runner.shutdown()


def test_a_store_damaged_while_the_server_runs_is_renewed_and_students_never_see_sqlite(tmp_path):
    from streamlit.testing.v1 import AppTest

    from mtl_core.jobs.runner import server_runner, shutdown_server_runners

    path = Path(os.environ["MTL_HOME"]) / "runs.sqlite"
    ids = _finished_store(path)
    shutdown_server_runners()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.query_params["u"] = f"{1:012d}"  # Ada, whose runs 16 and 19 sit on the page about to be hit
        at.switch_page("pages/train.py")
        at.run()
        assert not at.exception and not at.error
        hit = _scribble_over_the_page_of(path, b"run-016-")
        lost = {rid for i, rid in enumerate(ids) if f"run-{i:03d}-".encode() in hit}
        at.run()
        said = " ".join(str(e.value) for e in [*at.error, *at.warning, *at.sidebar.warning, *at.sidebar.error])
        assert "found damaged" in said and not any(w in said.lower() for w in ("malformed", "btree", "sqlite"))
        store = server_runner().store
        assert "moved aside" in store.notice  # renewed while the server runs, not at its next restart
        assert {r["id"] for r in store.list_runs()} == set(ids) - lost
        at.run()
        assert not at.exception and not at.error
        assert " ".join(w.value for w in at.sidebar.warning) == PUBLIC_NOTICE
    finally:
        shutdown_server_runners()


def test_a_second_dashboard_follows_the_store_the_training_server_renewed(tmp_path):
    path = tmp_path / "runs.sqlite"
    owner, second = RunStore(path), RunStore(path)  # the server with the pool, and another dashboard
    path.write_bytes(b"")
    Path(str(path) + "-wal").unlink(missing_ok=True)
    with pytest.raises(StoreLost):
        second.list_runs()
    assert not second.follow() and path.stat().st_size == 0  # not renewed yet: it waits, creating nothing
    assert owner.recover()
    rid = owner.create_run(TrainConfig.preset("hard").to_dict())
    assert second.follow() and [r["id"] for r in second.list_runs()] == [rid]
