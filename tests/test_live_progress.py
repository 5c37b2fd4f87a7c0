"""The live progress line (dashboard/live.py): its words, what its route answers and to whom, and that the
server Streamlit builds really serves it. The browser side: tests/browser/test_browser.py."""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import MagicMock

import pytest
from itsdangerous import URLSafeSerializer
from starlette.applications import Starlette

from dashboard import live
from mtl_core.config import TrainConfig
from mtl_core.store.identity import signing_key
from mtl_core.store.runs import RunStore


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def get(app, path: str) -> Answer:
    """One GET through the ASGI app, as the server would pass it (no HTTP client library needed)."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 80)}  # fmt: skip
    # In a thread of its own: the browser tests' Playwright may hold an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], headers, body)


def _record(epoch: int, seconds: float) -> dict:
    return {"epoch": epoch, "seconds": seconds, "train_loss": {"even": 0.1}, "metrics": {"even": {"acc": 0.9}},
            "avg_acc": 0.9}  # fmt: skip


@pytest.fixture
def training(tmp_path) -> tuple[RunStore, str]:
    """A 10-epoch run in training: 2 epochs of 3 s and 4 s done, the third 25 % through."""
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(TrainConfig.preset("hard", data="synthetic", epochs=10).to_dict(), owner="o")
    assert store.claim_next("w", os.getpid()) == run_id
    store.mark_started(run_id, "w", 1, "synthetic", "cpu")
    store.add_epoch(run_id, _record(1, 3.0), "w")
    store.add_epoch(run_id, _record(2, 4.0), "w")
    store.heartbeat(run_id, "w", epoch_done=0.25)
    return store, run_id


def test_the_line_counts_epochs_and_the_time_left():
    fraction, text = live.running_line(2, 10, 0.25, 3.5)
    assert fraction == pytest.approx(0.225)
    assert text == "Epoch 2 of 10 · epoch 3 25% done · 28 s left (3.5 s per epoch)"  # 8 epochs of 3.5 s
    assert live.running_line(0, 10, 0.4, 0.0) == (pytest.approx(0.04), "Epoch 0 of 10 · first epoch 40% done")
    assert live.running_line(10, 10, 0.5, 1.0)[0] == 1.0  # never past the end


def test_progress_reads_the_run_from_the_store(training):
    store, run_id = training
    state = live.progress(store, run_id)
    assert state == {"status": "running", "epochs": 2, "fraction": pytest.approx(0.225), "paused": False,
                     "text": "Epoch 2 of 10 · epoch 3 25% done · 28 s left (3.5 s per epoch)"}  # fmt: skip
    store.finish(run_id, "finished")
    assert live.progress(store, run_id)["status"] == "finished"
    store.delete_run(run_id)
    assert live.progress(store, run_id) is None


def test_a_token_opens_its_run_and_nothing_else(training, tmp_path):
    store, run_id = training
    token = live.token_for(store, run_id)
    assert run_id not in token  # signed and encoded, not the bare id
    assert live.run_of(store, token) == run_id
    assert live.run_of(store, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None  # tampered
    assert live.run_of(store, run_id) is None  # the bare id
    # the same key under another purpose (the identity cookie's salt is not this one) opens nothing here
    other_purpose = URLSafeSerializer(signing_key(store.path.parent), salt="something else").dumps(run_id)
    assert live.run_of(store, other_purpose) is None
    elsewhere = RunStore(tmp_path / "other" / "runs.sqlite")  # another server's key
    assert live.run_of(elsewhere, token) is None


def test_the_route_answers_the_runs_progress_and_nothing_for_a_bad_token(training):
    store, run_id = training
    app = Starlette(routes=live.routes(lambda: store))
    answer = get(app, f"/_mtl/live/{live.token_for(store, run_id)}")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert answer.json() == live.progress(store, run_id)
    assert get(app, f"/_mtl/live/{run_id}").status_code == 404
    store.delete_run(run_id)
    assert get(app, f"/_mtl/live/{live.token_for(store, run_id)}").status_code == 404


def test_the_server_streamlit_builds_serves_the_route(training, monkeypatch):
    from streamlit.web.server.starlette import starlette_app

    store, run_id = training
    monkeypatch.setattr(starlette_app, "create_streamlit_routes", starlette_app.create_streamlit_routes)
    monkeypatch.setattr(live, "_served", False)
    live.install()
    live.install()  # twice: still one route
    assert not live.served()  # installed, but no server built with it yet: the monitor keeps polling
    runner = MagicMock()
    runner.store = store
    monkeypatch.setattr("mtl_core.jobs.runner.server_runner", lambda: runner)
    app = starlette_app.create_starlette_app(runtime=MagicMock())
    assert live.served()
    paths = [getattr(r, "path", "") for r in app.routes]
    assert paths.count("/_mtl/live/{token}") == 1
    answer = get(app, f"/_mtl/live/{live.token_for(store, run_id)}")
    assert answer.status_code == 200 and answer.json()["epochs"] == 2


def test_the_route_follows_the_servers_base_path(monkeypatch):
    from streamlit import config

    monkeypatch.setattr(config, "get_option", lambda name: "/class/" if name == "server.baseUrlPath" else None)
    assert live._path("abc") == "/class/_mtl/live/abc"
    monkeypatch.setattr(config, "get_option", lambda name: "")
    assert live._path("abc") == "/_mtl/live/abc"
