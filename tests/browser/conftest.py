"""Fixtures for the real-browser tests: one dashboard server (`python -m dashboard.serve`) per session,
Debian's chromium.

The server runs with its own MTL_HOME (a temp folder) and full MNIST from ../shared/data when that
holds MNIST/raw, else an empty folder (the app then falls back to the embedded 5,000-digit subset).
The server is started in its own session; its training workers (`python -m mtl_core.jobs.worker`) exit
within a second of the server, whichever way it stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
CHROMIUM = os.environ.get("MTL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
TEACHER_TOKEN = "browser-test-teacher-token"
HEALTH_TIMEOUT_S = 60

try:  # without Playwright (a plain `pip install -r requirements.txt`) these tests are not collected
    import playwright.sync_api  # noqa: F401
    import pytest_playwright  # noqa: F401
except ImportError:
    collect_ignore_glob = ["test_*.py"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def _signal_group(proc: subprocess.Popen, sig: int, wait_s: float) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        pass


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is left. Training workers run in a session of
    their own (so Ctrl+C cannot kill a job); they exit by themselves once idle and orphaned."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM, 10)
    _signal_group(proc, signal.SIGKILL, 5)


@contextlib.contextmanager
def dashboard_server(tmp: Path):
    """A fresh `python -m dashboard.serve` (Streamlit on app.py) on a free port, with its own MTL_HOME
    under `tmp`; yields its base URL once healthy, stops it (and its process group) after."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    home = tmp / "mtl_home"
    home.mkdir()
    data_dir = SHARED_DATA if (SHARED_DATA / "MNIST" / "raw").is_dir() else tmp / "no-mnist"
    data_dir.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        MTL_HOME=str(home),
        MTL_DATA_DIR=str(data_dir),
        MTL_TEACHER_TOKEN=TEACHER_TOKEN,
        MTL_CHART_EVERY_S="3",
    )
    port = _free_port()
    log_path = tmp / "streamlit.log"
    cmd = [  # the README's launcher: the job runner starts with the server, before any page view
        sys.executable,
        "-m",
        "dashboard.serve",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while not _healthy(f"{base}/_stcore/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"streamlit did not become healthy on {base} (exit {proc.poll()}):\n{tail}")
            time.sleep(0.25)
        yield base
    finally:
        _stop_group(proc)


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory):
    """Base URL of the session's dashboard server (dashboard_server)."""
    with dashboard_server(tmp_path_factory.mktemp("browser_server")) as base:
        yield base


@pytest.fixture
def fresh_server(tmp_path):
    """A dashboard server of this test's own, that nothing has visited yet."""
    with dashboard_server(tmp_path) as base:
        yield base


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium instead of a Playwright-downloaded browser (never `playwright install` here)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": VIEWPORT}


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    d = ROOT / "test-artifacts" / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d
