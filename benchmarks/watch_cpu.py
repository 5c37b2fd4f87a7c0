"""What a tab watching a run in training costs its browser: `python benchmarks/watch_cpu.py [--tabs 2]`.

Starts the dashboard (`python -m dashboard.serve`, its own MTL_HOME), opens `--tabs` headless Chromium
tabs (each a student of its own), has each queue a long run from the Train form (its default model, STL, or
`--model`), and once
every run trains, samples the CPU of the whole Chromium process tree for `--seconds`, with the tabs
only watching. Prints the browsers' CPU per watching tab (% of one core), the server's, and, for
reference, the same tabs sitting on the Home page (where nothing polls). Issue 24's goal: at most 5 %
of a core per watching tab. Full MNIST from $MTL_DATA_DIR when it is there.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MTL_CHROMIUM", "/usr/bin/chromium")
T = 120_000
SCRIPT_DONE_JS = """() => {
    const app = document.querySelector('[data-test-script-state]');
    return app && app.getAttribute('data-test-script-state') === 'notRunning';
}"""


def start_server(home: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, MTL_HOME=str(home))
    cmd = [sys.executable, "-m", "dashboard.serve", "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import urllib.request

    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the dashboard did not start")


def chromium_tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if "chrom" in p.name().lower()]


def cpu_of(procs_fn, seconds: float) -> float:
    """% of one core the processes (re-listed each second, so new renderers count) used over `seconds`."""
    seen: dict[int, psutil.Process] = {}
    total, t_end = 0.0, time.monotonic() + seconds
    start = {}
    for p in procs_fn():
        try:
            start[p.pid] = sum(p.cpu_times()[:2])
            seen[p.pid] = p
        except psutil.Error:
            pass
    t0 = time.monotonic()
    while time.monotonic() < t_end:
        time.sleep(1)
        for p in procs_fn():
            if p.pid not in seen:
                try:
                    start[p.pid] = 0.0
                    seen[p.pid] = p
                except psutil.Error:
                    pass
    for pid, p in seen.items():
        try:
            total += sum(p.cpu_times()[:2]) - start[pid]
        except psutil.Error:
            pass
    return 100 * total / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tabs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--model", default="", help="the Train form's model to pick, e.g. '4-task CNN' (default: its own)")
    a = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="watch_cpu_"))
    server = start_server(home, a.port)
    base = f"http://127.0.0.1:{a.port}"
    server_ps = psutil.Process(server.pid)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            pages = []
            for _ in range(a.tabs):
                page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                page.set_default_timeout(T)
                page.goto(base + "/train")
                page.get_by_role("heading", name="Train").wait_for()
                if a.model:
                    page.get_by_test_id("stRadio").get_by_text(a.model, exact=True).click()
                    page.wait_for_function(SCRIPT_DONE_JS)
                form = page.get_by_test_id("stForm")
                form.get_by_label("Epochs", exact=True).fill("500")
                form.get_by_role("button", name=re.compile("Start")).click()
                pages.append(page)
            for page in pages:  # every run trains and its curve is drawn
                page.wait_for_function(
                    "() => { const p = document.querySelector('.js-plotly-plot'); return p && p.data && "
                    "p.data.length && p.data[0].x.length >= 2; }",
                    timeout=T,
                )
            time.sleep(5)
            server_ps.cpu_percent()
            watching = cpu_of(chromium_tree, a.seconds)
            server_cpu = server_ps.cpu_percent()
            for page in pages:
                page.goto(base + "/")
                page.get_by_role("heading", name="Multi-task learning playground").wait_for()
            time.sleep(3)
            idle = cpu_of(chromium_tree, a.seconds / 2)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"{a.tabs} tabs watching a run in training for {a.seconds:.0f} s: Chromium {watching / a.tabs:.1f} % of a "
          f"core per tab (all tabs {watching:.1f} %); the server {server_cpu:.1f} %")  # fmt: skip
    print(f"the same tabs on Home (nothing polls): {idle / a.tabs:.1f} % of a core per tab")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
