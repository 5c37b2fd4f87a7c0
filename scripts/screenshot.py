"""The README's picture: `python scripts/screenshot.py [--out docs/screenshot.png]`.

Starts the dashboard on a free port with a temporary run store, opens a share link for a short
hard-sharing run in headless Chromium (Debian's, as the browser tests use), presses Start, waits for the
run to finish and photographs the Train page at 1400x1060. Full MNIST when $MTL_DATA_DIR holds it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, _free_port, _healthy, _stop_group  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--link", default="/train?model=hard&epochs=6")
    a = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as home:
        port = _free_port()
        env = dict(os.environ, MTL_HOME=home)
        cmd = [sys.executable, "-m", "dashboard.serve", "--server.headless", "true", "--server.port", str(port)]
        cmd += ["--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not _healthy(f"{base}/_stcore/health"):
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not start within 60 s")
                time.sleep(0.5)
            urllib.request.urlopen(base, timeout=30).read()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1060})
                page.goto(base + a.link)
                page.get_by_role("button", name="Start training").click(timeout=60_000)
                expect(page.get_by_text("Finished all")).to_be_visible(timeout=300_000)
                page.wait_for_timeout(1500)  # Plotly's last redraw
                a.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(a.out))
                browser.close()
        finally:
            _stop_group(proc)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
