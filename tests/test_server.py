"""The server as a classroom runs it: its settings, and its job runner working with no browser open."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from waiting import wait_for  # tests/waiting.py

from mtl_core.config import TrainConfig
from mtl_core.store.runs import RunStore

ROOT = Path(__file__).resolve().parent.parent


def test_server_settings_suit_a_classroom():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["enableXsrfProtection"] is True
    assert 0 < cfg["server"]["maxUploadSize"] <= 5  # MB
    # One websocket message: room for the largest canvas picture the page accepts (2 MB), no more.
    assert 2 < cfg["server"]["maxWidgetStateSize"] <= 4  # MB
    assert 0 < cfg["server"]["disconnectedSessionTTL"] <= 120
    assert cfg["runner"]["postScriptGC"] is False  # a full GC after every fragment run starves the server
    assert cfg["client"]["showErrorDetails"] == "none"  # a sentence, never a traceback with paths


def test_the_pages_folder_holds_only_the_routers_pages():
    """pages/ sits beside app.py as the design card names it; every file in it is one of app.py's
    st.Page entries (a stray script there would be served by Streamlit's legacy discovery), and the very
    first request of a fresh server still gets the router (tests/browser/test_first_request.py)."""
    routed = set(re.findall(r'st\.Page\("(pages/\w+\.py)"', (ROOT / "app.py").read_text()))
    present = {f"pages/{p.name}" for p in (ROOT / "pages").iterdir() if p.name != "__pycache__"}
    assert len(routed) == 5 and present == routed


def _wait(pred, timeout: float) -> bool:
    return wait_for(pred, timeout, every=0.2)


def test_the_launcher_trains_queued_jobs_with_no_browser_open(tmp_path):
    """A run queued before the server starts (e.g. left by a restart) trains with nobody visiting,
    and the workers exit within seconds once the server is killed."""
    home = tmp_path / "home"
    store = RunStore(home / "runs.sqlite")
    rid = store.create_run(TrainConfig.preset("hard", epochs=2, data="synthetic").to_dict())
    env = dict(os.environ, MTL_HOME=str(home), MTL_WORKERS="1")
    cmd = [sys.executable, "-m", "dashboard.serve", "--server.port", "0", "--server.address", "127.0.0.1"]
    server = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        assert _wait(lambda: store.get_run(rid)["status"] == "finished", 90), store.get_run(rid)
        long = store.create_run(TrainConfig.preset("hard", epochs=500, batch_size=8, data="synthetic").to_dict())
        assert _wait(lambda: len(store.epochs(long)) >= 1, 60)
        pid = store.get_run(long)["worker_pid"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert _wait(gone, 10), "a worker outlived its killed server"
    assert store.get_run(long)["status"] == "interrupted"


def test_a_second_server_on_the_same_folder_runs_no_pool_and_says_so():
    from streamlit.testing.v1 import AppTest

    from mtl_core.jobs.runner import JobRunner, shutdown_server_runners

    shutdown_server_runners()
    first = JobRunner(RunStore())  # the server that already trains for this folder
    try:
        assert first.has_pool
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.query_params["u"] = "0123456789ab"
        at.run()
        assert not at.exception
        assert any("Another dashboard server" in i.value for i in at.sidebar.info)
    finally:
        shutdown_server_runners()
        first.shutdown()


def test_every_connection_the_server_accepts_sends_without_waiting_for_acks():
    """dashboard/serve.py names Streamlit's listening socket as TCP, so asyncio sets TCP_NODELAY on each
    connection it accepts (without it, every answer after the first on a kept-alive connection waited
    40 ms for the browser's delayed ACK). The same wrapper and the same asyncio server as in production."""
    import asyncio
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from streamlit.web.server.starlette import starlette_server

    from dashboard.serve import _answer_without_delay

    _answer_without_delay()
    _answer_without_delay()  # twice is once
    assert getattr(starlette_server._bind_socket, "names_tcp", False)
    assert not getattr(starlette_server._bind_socket.__closure__[0].cell_contents, "names_tcp", False)
    listening = starlette_server._bind_socket("127.0.0.1", 0, 8)
    assert listening.proto == socket.IPPROTO_TCP and not listening.getblocking()

    async def accept_one() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    with ThreadPoolExecutor(1) as pool:  # a loop of its own: the browser tests leave one running here
        assert pool.submit(asyncio.run, accept_one()).result() != 0
