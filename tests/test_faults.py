"""Disk faults for real: a read-only and a full file system (a private tmpfs mounted in a user and
mount namespace, so no privileges are needed). Skipped where the kernel does not allow that."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNSHARE = shutil.which("unshare")


def _in_private_mount(tmp_path: Path, body: str) -> dict:
    """Run `body` (Python) with a 4 MB tmpfs mounted at MNT; it must print one JSON line."""
    if not UNSHARE:
        pytest.skip("no unshare(1) here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(
        [UNSHARE, "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.decode().strip()}")
    script = textwrap.dedent("""
        import json, os, subprocess, sys, time
        MNT = sys.argv[1]
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", MNT], check=True)
        os.environ["MTL_HOME"] = os.path.join(MNT, "home")
        os.environ["MTL_DATA_DIR"] = os.path.join(MNT, "no-mnist")
        from mtl_core.config import TrainConfig
        from mtl_core.store.runs import RunStore, StoreUnavailable
        from dashboard.serve import _router_from_the_first_request
        _router_from_the_first_request()  # AppTest runs app.py beside pages/ as the server does
        CFG = TrainConfig.preset("hard", epochs=1, data="synthetic").to_dict()

        def finished_run(store):
            rid = store.create_run(CFG, owner="0123456789ab", label="kept")
            store.claim_next("w")
            from mtl_core.data import make_synthetic
            from mtl_core.training.loop import Training
            training = Training(TrainConfig.from_dict(CFG), make_synthetic(256, 128))
            for record in training.records():
                store.add_epoch(rid, record, worker="w")
            store.models_dir.mkdir(parents=True, exist_ok=True)
            (store.models_dir / f"{rid}.safetensors").write_bytes(b"model bytes")
            store.finish(rid, "finished", "", training.summary(), worker="w")
            return rid

        def snapshot():
            out = {}
            for dirpath, _, files in os.walk(MNT):
                for f in files:
                    p = os.path.join(dirpath, f)
                    if not f.endswith(("-shm", ".lock")):
                        out[p] = open(p, "rb").read().hex()
            return out
    """) + textwrap.dedent(body)
    out = subprocess.run(
        [UNSHARE, "--user", "--map-root-user", "--mount", sys.executable, "-c", script, str(mnt)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_read_only_disk_keeps_runs_viewable_and_starts_nothing(tmp_path):
    r = _in_private_mount(
        tmp_path,
        """
        store = RunStore()
        rid = finished_run(store)
        db = __import__("sqlite3").connect(store.path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        before = snapshot()
        subprocess.run(["mount", "-o", "remount,ro", MNT], check=True)
        ro = RunStore()
        result = {"read_only": ro.read_only, "notice": ro.notice, "runs": [r["id"] for r in ro.list_runs()]}
        try:
            ro.create_run(CFG)
        except StoreUnavailable as exc:
            result["submit"] = str(exc)
        from mtl_core.jobs.runner import JobRunner
        runner = JobRunner(ro)
        time.sleep(2.5)
        result["pool"], result["workers"] = runner.has_pool, len(runner.worker_pids())
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file(os.path.abspath("app.py"), default_timeout=60)
        at.session_state["owner"] = "0123456789ab"  # AppTest has no cookie: the identity is set directly
        at.switch_page("pages/train.py")
        at.run()
        result["exceptions"] = [e.value + "".join(e.stack_trace) for e in at.exception]
        result["sidebar"] = [w.value for w in at.sidebar.warning]
        result["options"] = at.selectbox(key="watch_select").options
        result["intact"] = snapshot() == before
        result["rid"] = rid
        print(json.dumps(result))
        """,
    )
    assert r["read_only"] and "read-only" in r["notice"] and r["runs"] == [r["rid"]]
    assert "cannot be written (its folder is read-only)" in r["submit"]
    assert (r["pool"], r["workers"]) == (False, 0)  # no worker that would die at once, again and again
    assert r["exceptions"] == [] and any("read-only" in w for w in r["sidebar"])
    assert any(o.startswith("kept") for o in r["options"])  # the finished run is still viewable
    assert r["intact"]


def test_a_full_disk_refuses_new_runs_with_a_sentence_and_loses_nothing(tmp_path):
    r = _in_private_mount(
        tmp_path,
        """
        store = RunStore()
        rid = finished_run(store)
        with open(os.path.join(MNT, "filler"), "wb") as f:
            try:
                while True:
                    f.write(b"\\0" * 65536)
                    f.flush()
            except OSError:
                pass
        before = {k: v for k, v in snapshot().items() if not k.endswith(("filler", "-wal"))}
        result = {"rid": rid}
        try:
            for _ in range(200):
                store.create_run(CFG, label="x" * 5000)
        except StoreUnavailable as exc:
            result["submit"] = str(exc)
        result["runs"] = [r["id"] for r in store.list_runs() if r["label"] == "kept"]
        after = {k: v for k, v in snapshot().items() if not k.endswith(("filler", "-wal"))}
        result["intact"] = after == before
        print(json.dumps(result))
        """,
    )
    assert "cannot be written (the disk is full)" in r["submit"]
    assert r["runs"] == [r["rid"]] and r["intact"]


def test_a_damaged_store_is_moved_aside_and_the_page_says_so():
    """The server starts on a damaged store: a sentence in the teacher's sidebar, never a traceback; the
    damaged file is kept beside the new one. (Students' sentence: tests/test_store_salvage.py.)"""
    from streamlit.testing.v1 import AppTest

    from mtl_core.jobs.runner import shutdown_server_runners
    from mtl_core.store.runs import default_store_path

    path = default_store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"SQLite format 3\x00" + b"\x07" * 9000)
    shutdown_server_runners()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.query_params["u"] = "0123456789ab"
        at.session_state["teacher"] = True
        at.switch_page("pages/train.py")
        at.run()
        assert not at.exception
        warning = " ".join(w.value for w in at.sidebar.warning)
        assert "could not be read" in warning and "moved aside" in warning
        assert "No runs yet" in " ".join(i.value for i in at.info)
        aside = [p for p in path.parent.glob("runs.sqlite.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"SQLite format 3")
    finally:
        shutdown_server_runners()
