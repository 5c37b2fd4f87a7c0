"""A class against one server: `python benchmarks/load.py [--sessions 10 20 30] [--browsers 5] [--json FILE]`.

For each N, a fresh dashboard server (`python -m dashboard.serve`, loopback, its own MTL_HOME) and N
sessions, each: open the app, type a name, queue a small job through the Train form, switch pages while
it trains, wait for it to finish, draw a digit on the canvas and read the answers, open Compare. psutil
samples the server and its workers every 0.5 s. Reported per N: failed sessions, exceptions on the page,
interaction p50/p95 (click to the awaited text; for all sessions, and for each kind), queue wait, jobs
finished exactly once, the server's CPU while 10 tabs sit idle, and its memory once the tabs are closed
against the baseline before they opened.

Two kinds of session: `--browsers` of them (default 5, spread over the arrivals) in headless Chromium
(Playwright, Debian's chromium), the rest browserless (benchmarks/thin_client.py: the same messages on
the same websocket, no rendering). One Chromium session costs this machine 5-7 CPU-seconds against about
0.5 s for the server; a class's browsers run on the students' computers, so 30 Chromiums on the server's
own 2 cores would measure the browsers. The browsers run at the lowest CPU priority (`--browser-nice 19`),
and the server logs how long each of its script runs took (MTL_TIMING_LOG, dashboard/timing.py).

Pacing: by default the sessions arrive evenly over 60 s and pause 3 s between actions, as a class
does; `--lockstep` has all of them start at once and click as fast as they can (the worst case).

All sessions come from 127.0.0.1, so the per-address caps are lifted here (MTL_MAX_PER_CLIENT, and
MTL_NEW_IDS_PER_ADDRESS: each cookie-less session is a new identity); the
disconnected-session lifetime is shortened to 10 s so the memory after closing is measured in
seconds, not minutes. Not part of the test suite: run it on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from playwright.async_api import async_playwright, expect
from stats import percentile  # benchmarks/stats.py, beside this script
from thin_client import ThinSession, has, stroke_json, value  # benchmarks/thin_client.py

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MTL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1000}
T = 120_000  # ms: the longest any single wait may take before the session counts as failed
EPOCHS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler(threading.Thread):
    """CPU (% of one core) and memory of the server and its workers, every 0.5 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.server = psutil.Process(pid)
        # t, server cpu, worker cpu, server rss MB, whole machine cpu (all % of one core)
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        procs: dict[int, psutil.Process] = {}
        self.server.cpu_percent()
        psutil.cpu_percent()
        while not self.stop.wait(0.5):
            try:
                server_cpu = self.server.cpu_percent()
                rss = self.server.memory_info().rss / 2**20
                worker_cpu = 0.0
                for child in self.server.children(recursive=True):
                    p = procs.setdefault(child.pid, child)
                    worker_cpu += p.cpu_percent()
                machine = psutil.cpu_percent() * (os.cpu_count() or 1)
                self.samples.append((time.monotonic(), server_cpu, worker_cpu, rss, machine))
            except psutil.Error:
                pass

    def mean_cpu(self, since: float, until: float, column: int = 1) -> float:
        window = [s[column] for s in self.samples if since <= s[0] <= until]
        return statistics.mean(window) if window else float("nan")

    def rss(self) -> float:
        return self.server.memory_info().rss / 2**20


async def timed(latencies: list[tuple[str, float]], label: str, action, awaited) -> None:
    t0 = time.perf_counter()
    await action()
    await expect(awaited).to_be_visible(timeout=T)
    latencies.append((label, time.perf_counter() - t0))


async def nav(page, latencies, name: str, heading: str) -> None:
    link = page.get_by_test_id("stSidebarNav").get_by_role("link", name=name, exact=True)
    await timed(latencies, f"open {name}", link.click, page.get_by_role("heading", name=heading))


class Pace:
    """When a session arrives and how long it pauses between actions. Lock-step (0, 0) has every
    session click at the same instant; a class arrives over a minute or so and reads between clicks."""

    def __init__(self, arrive_s: float, think_s: float, n: int):
        self.arrive_s, self.think_s, self.n = arrive_s, think_s, n

    async def arrive(self, i: int) -> None:
        await asyncio.sleep(self.arrive_s * i / max(1, self.n))

    async def think(self) -> None:
        if self.think_s:
            await asyncio.sleep(self.think_s)

    def describe(self) -> str:
        if not (self.arrive_s or self.think_s):
            return "lock-step: every session starts at once and clicks as soon as it can"
        return f"arrivals spread over {self.arrive_s:g} s, {self.think_s:g} s between a session's actions"


async def one_session(
    i: int, browser, base: str, latencies: list[float], problems: list[str], owners: list[str], pace: Pace
) -> bool:
    await pace.arrive(i)
    # Its own context, as each student has a browser: tabs of one context would be background tabs,
    # whose timers and frames Chromium throttles (that alone made clicks 5-7 s here).
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(T)
    page = await context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    step = "open"
    try:
        home = page.get_by_role("heading", name="Multi-task learning playground")
        await timed(latencies, "load the app", lambda: page.goto(base + "/"), home)
        step = "name"
        name = page.get_by_test_id("stSidebar").get_by_label("Your name")
        await name.fill(f"Student {i:02d}")
        await name.press("Enter")
        await expect(name).to_have_value(f"Student {i:02d}", timeout=T)
        step = "train page"
        await pace.think()
        await nav(page, latencies, "Train", "Train")
        await page.get_by_test_id("stRadio").get_by_text("Hard sharing", exact=True).click()
        await expect(page.get_by_text("One shared 784-64-32 trunk")).to_be_visible(timeout=T)
        step = "form"
        form = page.get_by_test_id("stForm")
        data = form.get_by_role("combobox", name="Data", exact=True)
        await data.click()
        await page.get_by_role("option", name=SMOKE_DATA).click()
        await form.get_by_label("Epochs", exact=True).fill(str(EPOCHS))
        await form.get_by_label("Epochs", exact=True).press("Tab")
        step = "start"
        await pace.think()
        start = form.get_by_role("button", name="Start training")
        watching = page.get_by_role("combobox", name="Watching")
        await timed(latencies, "start training", start.click, watching)
        owners.append(f"Student {i:02d}")  # this session's one job, found by its unique display name
        step = "switch pages"
        await pace.think()
        await nav(page, latencies, "Compare", "Compare")
        await pace.think()
        await nav(page, latencies, "Train", "Train")
        step = "wait for the job"
        await expect(page.get_by_text(re.compile(rf"Finished all {EPOCHS} epochs"))).to_be_visible(timeout=600_000)
        step = "draw"
        await pace.think()
        await nav(page, latencies, "Draw", "Draw a digit")
        canvas = page.locator("canvas.upper-canvas")
        await expect(canvas).to_be_visible(timeout=T)
        await pace.think()
        bb = await canvas.bounding_box()
        x0, y0 = bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] * 0.2
        t0 = time.perf_counter()
        await page.mouse.move(x0, y0)
        await page.mouse.down()
        await page.mouse.move(x0, y0 + bb["height"] * 0.6, steps=15)
        await page.mouse.up()
        await expect(page.get_by_text(ANSWER).first).to_be_visible(timeout=T)
        latencies.append(("draw and read the answers", time.perf_counter() - t0))
        step = "compare"
        await pace.think()
        await nav(page, latencies, "Compare", "Compare")
        shown = await page.get_by_test_id("stException").count()
        if shown or page_errors:
            problems.append(f"session {i}: {shown} exceptions shown, page errors {page_errors[:2]}")
        return not shown and not page_errors
    except Exception as exc:  # noqa: BLE001 - a failed session is counted and described
        problems.append(f"session {i} at '{step}': {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return False
    finally:
        await context.close()


ANSWER = re.compile(r" → .+ \(P\(.+\) = \d+%\)")
SMOKE_DATA = "synthetic (random tensors, for a smoke test)"


async def thin_session(
    i: int, base: str, latencies: list[tuple[str, float]], problems: list[str], owners: list[str], pace: Pace
) -> bool:
    """The same student as one_session, on the wire without a browser (benchmarks/thin_client.py)."""
    await pace.arrive(i)
    s = ThinSession(base, timeout_s=T / 1000)
    step = "open"
    try:
        latencies.append(("load the app", await s.load()))
        step = "name"
        name = value(string_value=f"Student {i:02d}")
        await s.act(has(f"Student {i:02d}"), {"student_name": name})
        s.sticky["student_name"] = name  # the browser sends the sidebar's name with every rerun
        step = "train page"
        await pace.think()
        latencies.append(("open Train", await s.go("train", "Train")))
        await s.act(has("One shared 784-64-32 trunk"), {"train_model": value(string_value="Hard sharing")})
        step = "start"
        await pace.think()
        form = {"f_data_hard": value(string_value=SMOKE_DATA), "f_epochs_hard": value(int_value=EPOCHS),
                "train_submit_hard": value(trigger_value=True)}  # fmt: skip
        latencies.append(("start training", await s.act(has("Watching"), form)))
        owners.append(f"Student {i:02d}")
        step = "switch pages"
        await pace.think()
        latencies.append(("open Compare", await s.go("compare", "Compare")))
        await pace.think()
        latencies.append(("open Train", await s.go("train", "Train")))
        step = "wait for the job"
        await s.wait_for(has(re.compile(rf"Finished all {EPOCHS} epochs")), timeout_s=600)
        step = "draw"
        await pace.think()
        latencies.append(("open Draw", await s.go("draw", "Draw a digit")))
        await pace.think()
        drawn = {"canvas": value(json_value=stroke_json())}
        latencies.append(("draw and read the answers", await s.act(has(ANSWER), drawn)))
        step = "compare"
        await pace.think()
        latencies.append(("open Compare", await s.go("compare", "Compare")))
        if s.exceptions:
            problems.append(f"thin session {i}: {len(s.exceptions)} exceptions shown: {s.exceptions[:2]}")
        return not s.exceptions
    except Exception as exc:  # noqa: BLE001 - a failed session is counted and described
        problems.append(f"thin session {i} at '{step}': {type(exc).__name__}: {str(exc)[:160]}")
        return False
    finally:
        await s.close()


def browser_indices(n: int, browsers: int) -> set[int]:
    """Which of the n sessions run in Chromium: `browsers` of them, spread evenly over the arrivals."""
    b = min(n, browsers)
    return {k * n // b for k in range(b)} if b else set()


TEACHER_TOKEN = "load-test-teacher"


async def teacher_opens_compare(browser, base: str) -> float:
    """Seconds from the teacher switching to everyone's runs on Compare to the table and charts drawn."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    await page.goto(f"{base}/compare?teacher={TEACHER_TOKEN}")
    await expect(page.get_by_role("heading", name="Compare")).to_be_visible(timeout=T)
    t0 = time.perf_counter()
    await page.get_by_test_id("stSidebar").get_by_text("All students' runs").click()
    await expect(page.get_by_role("tab", name=re.compile("Look inside one run"))).to_be_visible(timeout=T)
    await expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=T)  # the open tab's curves
    seconds = time.perf_counter() - t0
    await context.close()
    return seconds


def renice_browsers(server_pid: int, nice: int) -> None:
    """Everything this process started except the server: the Playwright driver and Chromium. Pages
    opened later inherit it from the browser process."""
    server = {server_pid, *(p.pid for p in psutil.Process(server_pid).children(recursive=True))}
    for child in psutil.Process().children(recursive=True):
        if child.pid not in server:
            try:
                child.nice(nice)
            except psutil.Error:
                pass


async def run_class(n: int, base: str, sampler: Sampler, pace: Pace, browser_nice: int, browsers: int) -> dict:
    latencies: dict[str, list[tuple[str, float]]] = {"browser": [], "thin": []}
    problems: list[str] = []
    owners: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if browser_nice:
            renice_browsers(sampler.server.pid, browser_nice)
        in_chromium = browser_indices(n, browsers)
        ok = await asyncio.gather(*(
            one_session(i, browser, base, latencies["browser"], problems, owners, pace) if i in in_chromium
            else thin_session(i, base, latencies["thin"], problems, owners, pace)
            for i in range(n)
        ))  # fmt: skip
        compare_s = await teacher_opens_compare(browser, base) if n else None
        # Every tab open on the Train page with its finished run: nothing active, so nothing should poll.
        idle_pages = []
        for _ in range(min(n, 10)):
            ctx = await browser.new_context()
            page = await ctx.new_page()
            await page.goto(base + "/train")
            idle_pages.append(ctx)
        await asyncio.sleep(3)
        t0 = time.monotonic()
        await asyncio.sleep(10)
        idle_cpu = sampler.mean_cpu(t0, time.monotonic())
        for ctx in idle_pages:
            await ctx.close()
        await browser.close()
    return {
        "ok": ok,
        "latencies": latencies,
        "problems": problems,
        "owners": owners,
        "idle_cpu": idle_cpu,
        "idle_tabs": len(idle_pages),
        "compare_s": compare_s,
    }


async def warm_up(base: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        for path, heading in [("/", "Multi-task learning playground"), ("/train", "Train"),
                              ("/compare", "Compare"), ("/draw", "Draw a digit")]:  # fmt: skip
            await page.goto(base + path)
            await expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=T)
        await browser.close()


def store_figures(db: Path, owners: list[str]) -> dict:
    """Every session that saw its job queued has exactly one run, finished, with every epoch once."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, owner, status, created, started FROM runs").fetchall()
    epochs = dict(con.execute("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id").fetchall())
    owner_of_name = dict(con.execute("SELECT name, owner FROM owners WHERE name<>''").fetchall())
    con.close()
    per_owner = {o: [r for r in rows if r[1] == owner_of_name.get(o)] for o in owners}
    good = sum(len(v) == 1 and v[0][2] == "finished" and epochs.get(v[0][0]) == EPOCHS for v in per_owner.values())
    waits = sorted(r[4] - r[3] for r in rows if r[4])
    return {
        "jobs_submitted": len(owners),
        "jobs_in_store": len(rows),
        "jobs_finished_exactly_once": good,
        "lost_or_duplicated": len(owners) - good + max(0, len(rows) - len(owners)),
        "queue_wait_p50_s": percentile(waits, 0.5) if waits else None,
        "queue_wait_p95_s": percentile(waits, 0.95) if waits else None,
    }


def server_times(log: Path, since: float, until: float) -> list[float]:
    """Seconds of each full script run the server finished in [since, until] (dashboard/timing.py)."""
    if not log.exists():
        return []
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    return sorted(float(r[2]) for r in rows if since <= float(r[0]) <= until)


def measure(n: int, pace: Pace, browser_nice: int, browsers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        env = dict(os.environ, MTL_HOME=str(home), MTL_MAX_PER_CLIENT="1000", MTL_MAX_JOBS="1000")
        env["MTL_NEW_IDS_PER_ADDRESS"] = "1000"  # every session is a new identity from 127.0.0.1
        env["MTL_TEACHER_TOKEN"] = TEACHER_TOKEN
        env["MTL_TIMING_LOG"] = str(Path(tmp) / "script-runs.tsv")
        cmd = [sys.executable, "-m", "dashboard.serve", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--server.disconnectedSessionTTL", "10"]  # fmt: skip
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    if urllib.request.urlopen(base + "/_stcore/health", timeout=2).read().strip() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            sampler = Sampler(server.pid)
            sampler.start()
            # Baseline: the server after one visit to every page (torch and the pages imported).
            asyncio.run(warm_up(base))
            time.sleep(2)
            baseline = sampler.rss()
            t0, wall_t0 = time.monotonic(), time.time()
            result = asyncio.run(run_class(n, base, sampler, pace, browser_nice, browsers))
            wall = time.monotonic() - t0
            script_runs = server_times(Path(env["MTL_TIMING_LOG"]), wall_t0, wall_t0 + wall)
            # Where the CPU went while the class ran (the browsers are everything not server or workers).
            cpu = {
                name: sampler.mean_cpu(t0, t0 + wall, col)
                for name, col in (("server", 1), ("workers", 2), ("machine", 4))
            }
            time.sleep(15)  # the 10 s session lifetime, and a little more
            after = sampler.rss()
            sampler.stop.set()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        figures = store_figures(home / "runs.sqlite", result["owners"])

    def p50_p95(values: list[float]) -> list[float] | None:
        values = sorted(values)
        return [round(percentile(values, 0.5), 2), round(percentile(values, 0.95), 2)] if values else None

    every = [v for kind in result["latencies"].values() for _, v in kind]
    by_action: dict[str, list[float]] = {}
    for kind in result["latencies"].values():
        for label, v in kind:
            by_action.setdefault(label, []).append(v)
    return {
        "sessions": n,
        "chromium_sessions": len(browser_indices(n, browsers)),
        "pace": pace.describe(),
        "failed_sessions": result["ok"].count(False),
        "problems": result["problems"][:5],
        "interactions": len(every),
        "interaction_p50_s": p50_p95(every)[0] if every else None,
        "interaction_p95_s": p50_p95(every)[1] if every else None,
        "chromium_p50_p95_s": p50_p95([v for _, v in result["latencies"]["browser"]]),
        "thin_p50_p95_s": p50_p95([v for _, v in result["latencies"]["thin"]]),
        "server_script_runs": len(script_runs),
        "server_script_p50_s": round(percentile(script_runs, 0.5), 3) if script_runs else None,
        "server_script_p95_s": round(percentile(script_runs, 0.95), 3) if script_runs else None,
        "browsers_nice": browser_nice,
        "p50_p95_s_by_action": {k: p50_p95(v) for k, v in by_action.items()},
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items()},
        "idle_server_cpu_pct": round(result["idle_cpu"], 2),
        "compare_open_all_runs_s": None if result["compare_s"] is None else round(result["compare_s"], 2),
        "idle_tabs": result["idle_tabs"],
        "server_rss_baseline_mb": round(baseline),
        "server_rss_after_close_mb": round(after),
        "memory_vs_baseline_pct": round(100 * (after - baseline) / baseline, 1),
        "wall_s": round(wall, 1),
        "class_cpu_pct_of_a_core": {k: round(v) for k, v in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--arrive-s", type=float, default=60.0, help="sessions arrive evenly over this long")
    ap.add_argument("--think-s", type=float, default=3.0, help="pause between one session's actions")
    ap.add_argument("--lockstep", action="store_true", help="no arrival spread, no pauses (--arrive-s 0 --think-s 0)")
    ap.add_argument("--browser-nice", type=int, default=19, help="CPU niceness of the browsers (0: same as the server)")
    ap.add_argument("--browsers", type=int, default=5, help="sessions in Chromium; the rest are thin_client.py ones")
    a = ap.parse_args(argv)
    if a.lockstep:
        a.arrive_s = a.think_s = 0.0
    print(f"{os.cpu_count()} cores; server and browsers on this machine (loopback)", flush=True)
    results = []
    for n in a.sessions:
        r = measure(n, Pace(a.arrive_s, a.think_s, n), a.browser_nice, a.browsers)
        results.append(r)
        print(json.dumps(r), flush=True)
    head = (
        "| N | failed sessions | exceptions | interaction p50 / p95 | Chromium p50 / p95 | browserless p50 / p95 "
        "| queue wait p50 / p95 | jobs finished once "
        "| server script run p50 / p95 | idle server CPU | server memory after close | Compare, all runs |"
    )
    print(head + "\n|" + "---|" * 12)

    def pair(v: list[float] | None) -> str:
        return f"{v[0]} / {v[1]} s" if v else "-"

    for r in results:
        print(
            f"| {r['sessions']} | {r['failed_sessions']} | {sum('exceptions' in p for p in r['problems'])} | "
            f"{r['interaction_p50_s']} / {r['interaction_p95_s']} s | "
            f"{pair(r['chromium_p50_p95_s'])} | {pair(r['thin_p50_p95_s'])} | "
            f"{r['queue_wait_p50_s']} / {r['queue_wait_p95_s']} s | "
            f"{r['jobs_finished_exactly_once']}/{r['jobs_submitted']} (lost or doubled: {r['lost_or_duplicated']}) | "
            f"{r['server_script_p50_s']} / {r['server_script_p95_s']} s | "
            f"{r['idle_server_cpu_pct']}% of a core | {r['memory_vs_baseline_pct']:+}% | "
            f"{r['compare_open_all_runs_s']} s |"
        )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
