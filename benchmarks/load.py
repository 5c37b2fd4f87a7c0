"""A class against one server: `python benchmarks/load.py [--sessions 10 20 30] [--browsers 5] [--json FILE]`.

For each N, a fresh dashboard server (`python -m dashboard.serve`, loopback, its own MTL_HOME) and N
students. Each regular student opens the app, types a name, queues a short run through the Train form
(hard sharing, `--short-epochs` epochs, on the form's default data: "auto", which is full MNIST when the
server's MTL_DATA_DIR holds it), switches pages while it waits and trains, watches it finish on Train (the
page polls), draws a digit on the canvas and reads the answers, opens Compare.

With `--hostile` (the default), two of the N are not regular students, and they arrive first:
- the long-jobs student queues two 4-task CNN runs of `--long-epochs` epochs (about 7 s an epoch alone on
  this machine, so each would outlast the server's 30-minute job cap; both train for the whole benchmark)
  and keeps `--watchers` more tabs open on Train, each watching a run in training, so each polls;
- the hostile student trains a short run, opens Draw and sends the canvas a PNG data URL no page should
  decode, `--hostile-rate` times a second until the class is over: alternately a noise picture of
  `--hostile-mb` MB (over the 2 MB limit) and a blank 20000x20000 one (a few kB, over the pixel limit),
  each one different so no cache can answer it, and every 50th one of 4 MB, over the server's websocket
  message limit: the server closes that tab and the attacker opens it again. It should get the "too
  large" sentence back.
The regular students arrive once the long runs train and the flood has begun.

Two kinds of session: `--browsers` of the regular students (default 5, spread over the arrivals) in
headless Chromium (Playwright, Debian's chromium), the rest browserless (benchmarks/thin_client.py: the
same messages on the same websocket, no rendering). One Chromium session costs this machine 5-7
CPU-seconds against about 0.5 s for the server; a class's browsers run on the students' computers, so 30
Chromiums on the server's own 2 cores would measure the browsers. Playwright starts Chromium in a session
of its own, and where Linux groups processes by session (autogroup, as on this project's machines) CPU time
is shared between the groups first: the server, this script (the browserless sessions) and the browsers
are three groups of equal weight, as three computers would be (the training workers lower their own
groups). `--browser-nice N` lowers the browsers' group, and their processes, by N (default 0; every run
in BENCHMARKS.md so far had the browsers' group at 0, whatever niceness their processes had).
The server logs how long each of its script runs took (MTL_TIMING_LOG, dashboard/timing.py; reported per
page). The hostile, long-jobs and watching sessions are browserless.

Reported per N: failed sessions, exceptions on the page, click p50/p95 (click to the awaited text, a drawing
from the pen lifted; for all regular sessions, for each kind, and Chromium's seconds per action), queue wait
p50/p95/max of the regular students' short runs (started - created in the run store), short jobs finished
exactly once, the long runs' state and the seconds fair share paused them, the server's memory (its process
and children other than training workers, sampled every second) at its peak over its idle size, the workers'
memory, the server's CPU during the class and while only the watching tabs are left, how long each regular
student's Train page took to show their run finished after the store did (unclicked; over 30 s fails the
session), each Chromium tab's first page load split by the page's own timing, what one Chromium tab
watching a long run in training costs its browser then (% of a core over `--watch-s`, issue 24's 5 % goal),
and whether the hostile canvas messages got the "too large" sentence.

Pacing: by default the regular students arrive evenly over 60 s and pause 3 s between actions, as a
class does; `--lockstep` has all of them start at once and click as fast as they can (the worst case).

All sessions come from 127.0.0.1, so the per-address caps are lifted here (MTL_MAX_PER_CLIENT, and
MTL_NEW_IDS_PER_ADDRESS: every cookie-less session is a new identity, and the default 60 per 10 minutes
would refuse a whole class from one address twice over, e.g. when N 10, 20 and 30 run in a row); the
disconnected-session lifetime is shortened to 10 s so the memory after closing is measured in seconds,
not minutes. Not part of the test suite: run it on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image
from playwright.async_api import async_playwright, expect
from stats import percentile  # benchmarks/stats.py, beside this script
from thin_client import ThinSession, has, stroke_json, value  # benchmarks/thin_client.py
from watch_cpu import SCRIPT_DONE_JS  # benchmarks/watch_cpu.py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from mtl_core.jobs.autogroup import set_group_nice  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"  # where this project's machines keep MNIST (tests/browser too)
CHROMIUM = os.environ.get("MTL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1000}
T = 120_000  # ms: the longest any single wait may take before the session counts as failed
JOB_WAIT_S = 900  # a short run may wait this long for a worker before its session counts as failed
SHOWN_WITHIN_S = 30  # a page that shows its finished run later than this after the store: counted as failed
SAMPLE_S = 1.0
TEACHER_TOKEN = "load-test-teacher"
ANSWER = re.compile(r" → .+ \(P\(.+\) = \d+%\)")
# mtl_core/predict.py's refusals of a picture too large in bytes or in pixels, as the Draw page shows them.
TOO_LARGE = re.compile(r"That drawing cannot be used: the (file is .*the limit is|picture is .*pixels)")
HOSTILE_NAME, LONG_NAME = "Hostile Student", "Long Jobs"


def student_name(i: int) -> str:
    return f"Student {i:02d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what is measured on the machine ----------------------------------------------------------------


def is_worker(p: psutil.Process) -> bool:
    try:
        return "mtl_core.jobs.worker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


@dataclass
class Sample:
    t: float
    server_cpu: float  # % of one core: the server process and its children other than training workers
    worker_cpu: float
    server_mb: float  # RSS of the server process alone: a child caught between fork and exec (a worker
    # being started) shows the server's own pages as its RSS, and counting it would double the server
    worker_mb: float
    client_cpu: float  # this script and its browsers: the load, not the server
    machine_cpu: float


class Sampler(threading.Thread):
    """CPU and memory of the server, its training workers and the load generator, every second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.server = psutil.Process(pid)
        self.me = psutil.Process()
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self._procs: dict[int, psutil.Process] = {}

    def _tracked(self, p: psutil.Process) -> psutil.Process:
        """The same Process object each time, so cpu_percent() measures since the last sample."""
        known = self._procs.get(p.pid)
        if known is None:
            known = self._procs[p.pid] = p
            known.cpu_percent()
        return known

    def take(self) -> Sample | None:
        try:
            server_tree = [self.server, *self.server.children(recursive=True)]
        except psutil.Error:
            return None
        s = Sample(time.monotonic(), 0.0, 0.0, 0.0, 0.0, 0.0, psutil.cpu_percent() * (os.cpu_count() or 1))
        in_server = {p.pid for p in server_tree}
        for p in server_tree:
            try:
                p = self._tracked(p)
                cpu, mb = p.cpu_percent(), p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            if p.pid != self.server.pid and is_worker(p):
                s.worker_cpu, s.worker_mb = s.worker_cpu + cpu, s.worker_mb + mb
            else:
                s.server_cpu += cpu
                if p.pid == self.server.pid:
                    s.server_mb = mb
        for p in [self.me, *self.me.children(recursive=True)]:
            if p.pid in in_server:
                continue
            try:
                s.client_cpu += self._tracked(p).cpu_percent()
            except psutil.Error:
                pass
        return s

    def run(self) -> None:
        self.take()
        psutil.cpu_percent()
        while not self.stop.wait(SAMPLE_S):
            s = self.take()
            if s is not None:
                self.samples.append(s)

    def window(self, since: float, until: float) -> list[Sample]:
        return [s for s in self.samples if since <= s.t <= until]

    def mean(self, since: float, until: float, what: str) -> float:
        values = [getattr(s, what) for s in self.window(since, until)]
        return statistics.mean(values) if values else float("nan")

    def peak(self, since: float, until: float, what: str) -> float:
        values = [getattr(s, what) for s in self.window(since, until)]
        return max(values) if values else float("nan")


# --- pacing and bookkeeping -------------------------------------------------------------------------


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


@dataclass
class Plan:
    short_epochs: int = 2
    long_epochs: int = 300
    watchers: int = 5
    hostile: bool = True
    hostile_rate: float = 50.0
    hostile_mb: float = 2.1
    watch_s: float = 30.0  # the Chromium watching tab's measure (0: none)


@dataclass
class Outcome:
    """What the sessions of one class saw."""

    latencies: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: {"browser": [], "thin": []})
    problems: list[str] = field(default_factory=list)
    exceptions: int = 0  # exceptions shown on the regular students' pages
    owners: list[str] = field(default_factory=list)  # display names of students whose short run was queued
    hostile: dict = field(default_factory=dict)
    watching: dict = field(default_factory=dict)
    first_loads: list[dict] = field(default_factory=list)  # where each Chromium tab's first load went
    finish_shown_s: dict[str, list[float]] = field(default_factory=lambda: {"browser": [], "thin": []})


# --- a regular student, in Chromium -----------------------------------------------------------------


# Milliseconds from the page's request: its HTML, the last of the scripts and styles its HTML names (the
# server answers each), those scripts run (DOMContentLoaded), and the load event; then how many files.
FIRST_LOAD_JS = """() => {
  const n = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const early = res.filter(r => r.startTime < n.domInteractive);
  const last = early.reduce((m, r) => Math.max(m, r.responseEnd), 0);
  return {html_ms: Math.round(n.responseEnd), files_ms: Math.round(last),
          dcl_ms: Math.round(n.domContentLoadedEventEnd), load_ms: Math.round(n.loadEventEnd),
          files: res.length, early_files: early.length};
}"""


async def timed(latencies: list[tuple[str, float]], label: str, action, awaited) -> None:
    t0 = time.perf_counter()
    await action()
    await expect(awaited).to_be_visible(timeout=T)
    latencies.append((label, time.perf_counter() - t0))


async def nav(page, latencies, name: str, heading: str) -> None:
    link = page.get_by_test_id("stSidebarNav").get_by_role("link", name=name, exact=True)
    await timed(latencies, f"open {name}", link.click, page.get_by_role("heading", name=heading))


class FinishedRuns:
    """When each student's short run was first seen finished in the run store: one reader for the whole
    class, every 0.25 s while anyone waits, rather than one per waiting session."""

    def __init__(self, db: Path):
        self.db, self.seen = db, {}
        self._events: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task | None = None

    async def when(self, name: str) -> float:
        """Wait for this student's run to be finished in the store; when it was first seen so (monotonic)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._events.setdefault(name, asyncio.Event()).wait(), JOB_WAIT_S)
        except TimeoutError:
            raise TimeoutError(f"its run did not finish in {JOB_WAIT_S} s") from None
        return self.seen[name]

    async def _read(self) -> None:
        while True:
            names = await asyncio.to_thread(finished_owners, self.db)
            now = time.monotonic()
            for name in names - self.seen.keys():
                self.seen[name] = now
                self._events.setdefault(name, asyncio.Event()).set()
            await asyncio.sleep(0.25)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()


async def shown_finished(finished: FinishedRuns, name: str, kind: str, out: Outcome, shown) -> None:
    """The page on Train must show the run finished by itself (no click): the seconds from the store
    saying so to the page saying so are recorded; past SHOWN_WITHIN_S the session fails (a lost update)."""
    done = asyncio.create_task(shown())
    try:
        store_t = await finished.when(name)
        try:
            await asyncio.wait_for(asyncio.shield(done), SHOWN_WITHIN_S)
        except TimeoutError:
            raise TimeoutError(f"the page did not show its finished run within {SHOWN_WITHIN_S} s") from None
    finally:
        done.cancel()  # a no-op once it is done
    out.finish_shown_s[kind].append(max(0.0, time.monotonic() - store_t))


async def one_session(i: int, browser, base: str, out: Outcome, pace: Pace, plan: Plan, runs: FinishedRuns) -> bool:
    await pace.arrive(i)
    latencies = out.latencies["browser"]
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
        out.first_loads.append({"s": round(latencies[-1][1], 2), **await page.evaluate(FIRST_LOAD_JS)})
        step = "name"
        name = page.get_by_test_id("stSidebar").get_by_role("textbox", name="Your name")
        await name.fill(student_name(i))
        await name.press("Enter")
        await expect(name).to_have_value(student_name(i), timeout=T)
        step = "train page"
        await pace.think()
        await nav(page, latencies, "Train", "Train")
        await page.get_by_test_id("stRadio").get_by_text("Hard sharing", exact=True).click()
        await expect(page.get_by_text("One shared 784-64-32 trunk")).to_be_visible(timeout=T)
        step = "form"
        form = page.get_by_test_id("stForm")  # the Data box keeps its default: the form's default data
        epochs = form.get_by_label("Epochs", exact=True)
        # Until the rerun for the model ends, the previous model's form is still drawn beside the new one
        # (once seen drawn twice again after a count of one): the rerun ends first.
        await page.wait_for_function(SCRIPT_DONE_JS, timeout=T)
        await expect(epochs).to_have_count(1, timeout=T)
        await epochs.fill(str(plan.short_epochs))
        await epochs.press("Tab")
        step = "start"
        await pace.think()
        start = form.get_by_role("button", name="Start training")
        watching = page.get_by_role("combobox", name="Watching")
        await timed(latencies, "start training", start.click, watching)
        out.owners.append(student_name(i))
        step = "switch pages"
        await pace.think()
        await nav(page, latencies, "Compare", "Compare")
        await pace.think()
        await nav(page, latencies, "Train", "Train")
        step = "wait for the job"
        finished = page.get_by_text(re.compile(rf"Finished all {plan.short_epochs} epochs"))
        await shown_finished(runs, student_name(i), "browser", out, lambda: finished_visible(finished))
        step = "draw"
        await pace.think()
        await nav(page, latencies, "Draw", "Draw a digit")
        canvas = page.locator("canvas.upper-canvas")
        await expect(canvas).to_be_visible(timeout=T)
        await pace.think()
        bb = await canvas.bounding_box()
        x0, y0 = bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] * 0.2
        await page.mouse.move(x0, y0)
        await page.mouse.down()
        await page.mouse.move(x0, y0 + bb["height"] * 0.6, steps=15)
        t0 = time.perf_counter()  # the wait starts when the stroke ends (the pen lifted), as a person's does
        await page.mouse.up()
        await expect(page.get_by_text(ANSWER).first).to_be_visible(timeout=T)
        latencies.append(("draw and read the answers", time.perf_counter() - t0))
        step = "compare"
        await pace.think()
        await nav(page, latencies, "Compare", "Compare")
        shown = await page.get_by_test_id("stException").count()
        out.exceptions += shown
        if shown or page_errors:
            out.problems.append(f"session {i}: {shown} exceptions shown, page errors {page_errors[:2]}")
        return not shown and not page_errors
    except Exception as exc:  # noqa: BLE001 - a failed session is counted and described
        out.problems.append(f"session {i} at '{step}': {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return False
    finally:
        await context.close()


# --- a regular student, browserless -----------------------------------------------------------------


async def named(s: ThinSession, name: str) -> None:
    """Open the app and type a name, as every student does first."""
    await s.load()
    typed = value(string_value=name)
    await s.act(has(name), {"student_name": typed})
    s.sticky["student_name"] = typed  # the browser sends the sidebar's name with every rerun


async def queue_short_run(s: ThinSession, plan: Plan, latencies: list[tuple[str, float]] | None = None) -> None:
    """Hard sharing with the form's defaults (its data included) but for the epochs, then Start."""
    seconds = await s.go("train", "Train")
    await s.act(has("One shared 784-64-32 trunk"), {"train_model": value(string_value="Hard sharing")})
    form = {"f_epochs_hard": value(int_value=plan.short_epochs), "train_submit_hard": value(trigger_value=True)}
    started = await s.act(has("Watching"), form)
    if latencies is not None:
        latencies += [("open Train", seconds), ("start training", started)]


async def finished_visible(locator) -> None:
    await expect(locator).to_be_visible(timeout=(JOB_WAIT_S + SHOWN_WITHIN_S) * 1000)


async def thin_session(i: int, base: str, out: Outcome, pace: Pace, plan: Plan, runs: FinishedRuns) -> bool:
    """The same student as one_session, on the wire without a browser (benchmarks/thin_client.py)."""
    await pace.arrive(i)
    latencies = out.latencies["thin"]
    s = ThinSession(base, timeout_s=T / 1000)
    step = "open"
    try:
        t0 = time.perf_counter()
        await named(s, student_name(i))
        latencies.append(("load the app", time.perf_counter() - t0))
        step = "train page"
        await pace.think()
        step = "start"
        await queue_short_run(s, plan, latencies)
        out.owners.append(student_name(i))
        step = "switch pages"
        await pace.think()
        latencies.append(("open Compare", await s.go("compare", "Compare")))
        await pace.think()
        latencies.append(("open Train", await s.go("train", "Train")))
        step = "wait for the job"
        finished = has(re.compile(rf"Finished all {plan.short_epochs} epochs"))
        await shown_finished(
            runs, student_name(i), "thin", out, lambda: s.wait_for(finished, timeout_s=JOB_WAIT_S + SHOWN_WITHIN_S)
        )
        step = "draw"
        await pace.think()
        latencies.append(("open Draw", await s.go("draw", "Draw a digit")))
        await pace.think()
        drawn = {"canvas": value(json_value=stroke_json())}
        latencies.append(("draw and read the answers", await s.act(has(ANSWER), drawn)))
        step = "compare"
        await pace.think()
        latencies.append(("open Compare", await s.go("compare", "Compare")))
        out.exceptions += len(s.exceptions)
        if s.exceptions:
            out.problems.append(f"thin session {i}: {len(s.exceptions)} exceptions shown: {s.exceptions[:2]}")
        return not s.exceptions
    except Exception as exc:  # noqa: BLE001 - a failed session is counted and described
        out.problems.append(f"thin session {i} at '{step}': {type(exc).__name__}: {str(exc)[:160]}")
        return False
    finally:
        await s.close()


# --- the long-jobs student and its watching tabs ----------------------------------------------------


async def long_jobs_session(base: str, db: Path, plan: Plan, ready: asyncio.Event, over: asyncio.Event, out: Outcome):
    """Two long 4-task CNN runs queued from the Train form, this tab and `plan.watchers` more tabs of the
    same browser (its cookie) on Train watching them train, until the class is over."""
    s = ThinSession(base, timeout_s=T / 1000)
    tabs: list[ThinSession] = []
    step = "open"
    try:
        await named(s, LONG_NAME)
        out.watching["cookies"] = s.cookies  # the same student's Chromium tab watches later (chromium_watching)
        step = "queue the long runs"
        await s.go("train", "Train")
        await s.act(has("Shared conv trunk"), {"train_model": value(string_value="4-task CNN")})
        form = {"f_epochs_cnn": value(int_value=plan.long_epochs), "train_submit_cnn": value(trigger_value=True)}
        for _ in range(2):
            await s.act(has("Watching"), form)
        step = "wait for both to train"
        deadline = time.monotonic() + JOB_WAIT_S
        while len(runs_of(db, LONG_NAME, "running")) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the long runs did not both start in {JOB_WAIT_S} s")
            await asyncio.sleep(1)
        step = "open the watching tabs"
        for _ in range(plan.watchers):
            tab = ThinSession(base, timeout_s=T / 1000, cookies=s.cookies)
            tabs.append(tab)
            await tab.load("train", "Train")
            await tab.wait_for(has("Watching"))
        if not all(tab.widget_ids.get("watch_select") for tab in tabs):
            raise RuntimeError("a watching tab shows no run to watch: the cookie did not carry the identity")
    except Exception as exc:  # noqa: BLE001 - counted and described; the class goes on without it
        out.problems.append(f"long-jobs session at '{step}': {type(exc).__name__}: {str(exc)[:160]}")
    finally:
        ready.set()
    try:
        await over.wait()
        out.watching["fragment_runs"] = [tab.fragment_runs for tab in tabs]
        out.watching["live_fetches"] = [tab.live_fetches for tab in tabs]
        out.watching["tabs_closed_by_server"] = sum(bool(tab.closed) for tab in [s, *tabs])
        out.watching["exceptions"] = sum(len(tab.exceptions) for tab in [s, *tabs])
    finally:
        for tab in [s, *tabs]:
            await tab.close()


# --- the hostile student ----------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class HostilePictures:
    """Canvas values (the component's JSON, as in thin_client.stroke_json) whose PNG data URL no page should
    decode: over the byte limit (noise of `mb` MB) and over the pixel limit (blank, 20000x20000, a few kB),
    one after the other. Each differs from every other by a counter in a text chunk before the PNG's end,
    so no cache of outcomes can answer one; the PNG before that chunk is encoded once (its length is padded
    to a multiple of 3 bytes, so its base64 is a prefix of every message's)."""

    def __init__(self, mb: float, huge_mb: float = 4.0, huge_every: int = 50):
        def noise(mb: float) -> str:
            side = max(8, int((mb * 1e6 / 3) ** 0.5))
            pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
            return self._prefix(Image.fromarray(pixels, "RGB"), 1)

        self.kinds = [noise(mb), self._prefix(Image.new("1", (20_000, 20_000)), 9)]
        # Every `huge_every`-th message is over the server's websocket message limit (.streamlit/config.toml):
        # the server closes that tab, and the attacker opens it again (hostile_session).
        self.huge, self.huge_every = noise(huge_mb), huge_every
        self.sent = 0

    @staticmethod
    def _prefix(img: Image.Image, compress_level: int) -> str:
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=compress_level)
        body = buf.getvalue()[:-12]  # without IEND
        body += _png_chunk(b"tEXt", b"p\0" + b"x" * (-(len(body) + 14) % 3))  # 12 bytes besides its data
        assert len(body) % 3 == 0
        raw = json.dumps({"version": "7.4.0", "objects": [], "background": "#000000"})
        return '{"drawing": {"raw": ' + raw + ', "data": "data:image/png;base64,' + base64.b64encode(body).decode()

    def next(self) -> str:
        self.sent += 1
        tail = _png_chunk(b"tEXt", b"n\0" + str(self.sent).encode()) + _png_chunk(b"IEND", b"")
        kind = self.huge if self.sent % self.huge_every == 0 else self.kinds[self.sent % len(self.kinds)]
        return kind + base64.b64encode(tail).decode() + '"}}'


async def hostile_session(
    base: str, plan: Plan, ready: asyncio.Event, flood_over: asyncio.Event, out: Outcome, pictures: HostilePictures
):
    """A student's tab that trains a short run (so Draw shows its canvas), then sends the canvas oversized
    pictures `plan.hostile_rate` times a second without waiting for answers, until `flood_over`."""
    s = ThinSession(base, timeout_s=T / 1000)
    report = out.hostile
    step = "open"
    try:
        await named(s, HOSTILE_NAME)
        step = "train"
        await queue_short_run(s, plan)
        await s.wait_for(has(re.compile(rf"Finished all {plan.short_epochs} epochs")), timeout_s=JOB_WAIT_S)
        step = "draw"
        await s.go("draw", "Draw a digit")
        if "canvas" not in s.widget_ids:
            raise RuntimeError("the Draw page shows no canvas")
        ready.set()
        step = "flood"
        s.seen = []
        t0 = time.perf_counter()
        sent = n_bytes = 0
        reconnects = 0
        while not flood_over.is_set():
            picture = pictures.next()
            try:
                await s.send({"canvas": value(json_value=picture)})
            except Exception:  # noqa: BLE001 - the server closed this tab (a message over its size limit)
                # An attacker opens the tab again, as the same student, and goes on.
                reconnects += 1
                cookies = s.cookies
                await s.close()
                s = ThinSession(base, timeout_s=T / 1000, cookies=cookies)
                await s.load("draw", "Draw a digit")
                s.seen = []
                continue
            sent, n_bytes = sent + 1, n_bytes + len(picture)
            pause = t0 + sent / plan.hostile_rate - time.perf_counter()
            if pause > 0:
                try:
                    await asyncio.wait_for(flood_over.wait(), pause)
                except TimeoutError:
                    pass
        seconds = time.perf_counter() - t0
        report.update(
            sent=sent,
            flood_s=round(seconds, 1),
            rate_per_s=round(sent / seconds, 1) if seconds else None,
            mb_sent=round(n_bytes / 1e6),
            too_large_seen_in_flood=sum(bool(TOO_LARGE.search(t)) for t in s.seen),
            reconnects_after_the_server_closed_the_tab=reconnects,
        )
        step = "a last picture"  # with time to be read: the sentence must come in a complete run
        report["last_answer_s"] = round(await s.act(has(TOO_LARGE), {"canvas": value(json_value=pictures.next())}), 2)
        report["last_sentence"] = next((t for t in s.seen if TOO_LARGE.search(t)), "")[:120]
        report["got_too_large"] = True
        report["closed_by_server"] = s.closed or None
        report["exceptions"] = len(s.exceptions)
    except Exception as exc:  # noqa: BLE001 - counted and described
        report["got_too_large"] = False
        report["closed_by_server"] = s.closed or None
        out.problems.append(f"hostile session at '{step}': {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        ready.set()
        await s.close()


# --- the class --------------------------------------------------------------------------------------


def browser_indices(n: int, browsers: int) -> set[int]:
    """Which of the n sessions run in Chromium: `browsers` of them, spread evenly over the arrivals."""
    b = min(n, browsers)
    return {k * n // b for k in range(b)} if b else set()


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


def renice(processes: list[psutil.Process], nice: int) -> None:
    """Each process's niceness, and the CPU group of each that leads a session of its own (Chromium's
    browser process: Playwright starts it so), where Linux groups processes by session."""
    for p in processes:
        try:
            p.nice(nice)
            if os.getsid(p.pid) == p.pid:
                set_group_nice(nice, p.pid)
        except (psutil.Error, OSError):
            pass


def renice_browsers(server_pid: int, nice: int) -> None:
    """Everything this process started except the server: the Playwright driver and Chromium. Pages
    opened later inherit it from the browser process."""
    server = {server_pid, *(p.pid for p in psutil.Process(server_pid).children(recursive=True))}
    renice([c for c in psutil.Process().children(recursive=True) if c.pid not in server], nice)


@dataclass
class Phases:
    """Monotonic times the figures are cut by."""

    setup: float = 0.0  # the hostile and long-jobs students arrive
    bell: float = 0.0  # the regular students start arriving
    class_over: float = 0.0  # the last regular student is done (and the teacher has looked)
    watch_from: float = 0.0  # only the watching tabs (and the long runs) are left
    watch_until: float = 0.0


def print_waits() -> None:
    """Where each of the class's coroutines waits now, on stderr: for a run that does not end."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=6, file=sys.stderr)


async def run_class(
    n: int, base: str, db: Path, sampler: Sampler, pace: Pace, plan: Plan, browser_nice: int, browsers: int
) -> tuple[Outcome, list[bool], float | None, Phases]:
    out = Outcome()
    phases = Phases(setup=time.monotonic())
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, print_waits)  # `kill -USR1`: who waits where
    regular = n - 2 if plan.hostile else n
    flood_over, over = asyncio.Event(), asyncio.Event()
    extras: list[asyncio.Task] = []
    if plan.hostile:
        pictures = await asyncio.to_thread(HostilePictures, plan.hostile_mb)
        hostile_ready, long_ready = asyncio.Event(), asyncio.Event()
        extras.append(asyncio.create_task(hostile_session(base, plan, hostile_ready, flood_over, out, pictures)))
        await asyncio.sleep(1)  # its short run queued before the long ones: a model to draw with soon
        extras.append(asyncio.create_task(long_jobs_session(base, db, plan, long_ready, over, out)))
        await hostile_ready.wait()
        await long_ready.wait()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if browser_nice:
            renice_browsers(sampler.server.pid, browser_nice)
        in_chromium = browser_indices(regular, browsers)
        phases.bell = time.monotonic()
        runs = FinishedRuns(db)
        ok = await asyncio.gather(*(
            one_session(i, browser, base, out, pace, plan, runs) if i in in_chromium
            else thin_session(i, base, out, pace, plan, runs)
            for i in range(regular)
        ))  # fmt: skip
        runs.close()
        compare_s = await teacher_opens_compare(browser, base) if regular else None
        await browser.close()
    phases.class_over = time.monotonic()
    flood_over.set()
    if extras:
        await extras[0]  # the hostile student's last picture read
        await asyncio.sleep(3)
        phases.watch_from = time.monotonic()
        await asyncio.sleep(10)
        phases.watch_until = time.monotonic()
        if browsers and plan.watch_s and out.watching.get("cookies"):
            cpu = await chromium_watching(base, out.watching["cookies"], plan.watch_s, browser_nice)
            out.watching["chromium_tab_cpu_pct"] = None if cpu is None else round(cpu, 1)
        out.watching["long_runs_running"] = len(runs_of(db, LONG_NAME, "running"))
    over.set()
    await asyncio.gather(*extras)
    return out, ok, compare_s, phases


async def chromium_watching(base: str, cookies: dict[str, str], seconds: float, nice: int) -> float | None:
    """% of one core a Chromium tab on Train costs its browser while it watches one of the long-jobs
    student's runs train (its cookie, so its runs): the browser's whole process tree, sampled over
    `seconds` once the progress line shows the run moving (benchmarks/watch_cpu.py's measure)."""
    from watch_cpu import chromium_tree, cpu_of

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if nice:
            renice(chromium_tree(), nice)
        context = await browser.new_context(viewport=VIEWPORT)
        await context.add_cookies([{"name": k, "value": v, "url": base} for k, v in cookies.items()])
        page = await context.new_page()
        await page.goto(base + "/train")
        try:
            await expect(page.get_by_text(re.compile(r"^Epoch \d+ of \d+"))).to_be_visible(timeout=T)
            await expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=T)
        except AssertionError:
            await browser.close()
            return None  # no run of theirs in training to watch
        # The page's first load (a few CPU-seconds, at low priority on a busy machine) is over before the
        # measure starts: it is what a tab costs while it watches, not while it opens.
        await page.wait_for_function(SCRIPT_DONE_JS, timeout=T)
        await asyncio.sleep(10)
        cpu = await asyncio.to_thread(cpu_of, chromium_tree, seconds)
        await browser.close()
    return cpu


async def warm_up(base: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        for path, heading in [("/", "Multi-task learning playground"), ("/train", "Train"),
                              ("/compare", "Compare"), ("/draw", "Draw a digit")]:  # fmt: skip
            await page.goto(base + path)
            await expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=T)
        await browser.close()


# --- the run store's figures ------------------------------------------------------------------------


def _read_store(db: Path):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    return con


def runs_of(db: Path, name: str, status: str | None = None) -> list[dict]:
    """The runs of the student with this display name (names are unique in the store)."""
    if not db.exists():
        return []
    con = _read_store(db)
    try:
        rows = con.execute(
            "SELECT r.* FROM runs r JOIN owners o ON o.owner = r.owner WHERE o.name = ? ORDER BY r.created", (name,)
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        con.close()
    return [dict(r) for r in rows if status is None or r["status"] == status]


def finished_owners(db: Path) -> set[str]:
    """Display names of the students with a finished run in the store."""
    if not db.exists():
        return set()
    con = _read_store(db)
    try:
        rows = con.execute(
            "SELECT DISTINCT o.name FROM runs r JOIN owners o ON o.owner = r.owner WHERE r.status = 'finished'"
        ).fetchall()
    except sqlite3.Error:
        return set()
    finally:
        con.close()
    return {r[0] for r in rows}


def store_figures(db: Path, owners: list[str], plan: Plan) -> dict:
    """Every regular student who saw its run queued has exactly one, finished, with every epoch once; the
    queue waits of those runs; the long runs' state and the seconds fair share held them paused."""
    con = _read_store(db)
    rows = [dict(r) for r in con.execute("SELECT * FROM runs").fetchall()]
    epochs = dict(con.execute("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id").fetchall())
    owner_of_name = dict(con.execute("SELECT name, owner FROM owners WHERE name<>''").fetchall())
    con.close()
    short_owners = owners + ([HOSTILE_NAME] if plan.hostile else [])
    per_owner = {o: [r for r in rows if r["owner"] == owner_of_name.get(o)] for o in short_owners}
    good = sum(
        len(v) == 1 and v[0]["status"] == "finished" and epochs.get(v[0]["id"]) == plan.short_epochs
        for v in per_owner.values()
    )
    mine = {owner_of_name.get(o) for o in owners}
    waits = sorted(r["started"] - r["created"] for r in rows if r["owner"] in mine and r["started"])
    never_started = sum(1 for r in rows if r["owner"] in mine and not r["started"])
    long_runs = [r for r in rows if r["owner"] == owner_of_name.get(LONG_NAME)]
    now = time.time()
    paused = sum((r["paused_seconds"] or 0) + (now - r["paused_since"] if r["paused_since"] else 0) for r in long_runs)
    counted = len(short_owners) + (2 if plan.hostile else 0)
    return {
        "data_sources": sorted({r["data_source"] or "?" for r in rows if r["owner"] in mine}),
        "jobs_submitted": len(short_owners),
        "jobs_in_store": len(rows),
        "jobs_finished_exactly_once": good,
        "lost_or_duplicated": len(short_owners) - good + max(0, len(rows) - counted),
        "queue_wait_p50_s": percentile(waits, 0.5) if waits else None,
        "queue_wait_p95_s": percentile(waits, 0.95) if waits else None,
        "queue_wait_max_s": waits[-1] if waits else None,
        "short_runs_never_started": never_started,
        "long_runs": [f"{r['status']}, {epochs.get(r['id'], 0)} epochs" for r in long_runs],
        "long_runs_paused_s": paused,
    }


def server_times(log: Path, since: float, until: float) -> tuple[dict[str, list[float]], int]:
    """Seconds of each full script run the server finished in [since, until] (dashboard/timing.py), by page,
    and how many of them a newer message from the same tab cut short."""
    if not log.exists():
        return {}, 0
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    rows = [r for r in rows if len(r) >= 4 and since <= float(r[0]) <= until]
    by_page: dict[str, list[float]] = {}
    for r in rows:
        by_page.setdefault(r[1], []).append(float(r[2]))
    return by_page, sum(r[3] == "RerunException" for r in rows)


def data_dir(given: str | None) -> str | None:
    """Where the server looks for MNIST: --data-dir, else $MTL_DATA_DIR, else the shared copy if present."""
    if given:
        return given
    if os.environ.get("MTL_DATA_DIR"):
        return os.environ["MTL_DATA_DIR"]
    return str(SHARED_DATA) if (SHARED_DATA / "MNIST" / "raw").is_dir() else None


def measure(n: int, pace: Pace, plan: Plan, browser_nice: int, browsers: int, mnist: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        db = home / "runs.sqlite"
        port = free_port()
        env = dict(os.environ, MTL_HOME=str(home), MTL_MAX_PER_CLIENT="1000", MTL_MAX_JOBS="1000")
        env["MTL_NEW_IDS_PER_ADDRESS"] = "1000"  # every session is a new identity from 127.0.0.1
        env["MTL_TEACHER_TOKEN"] = TEACHER_TOKEN
        env["MTL_TIMING_LOG"] = str(Path(tmp) / "script-runs.tsv")
        if mnist:
            env["MTL_DATA_DIR"] = mnist
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
            # Idle: the server after one visit to every page (torch and the pages imported).
            asyncio.run(warm_up(base))
            time.sleep(3)
            idle_mb = statistics.median(s.server_mb for s in sampler.samples[-3:])
            wall_t0 = time.time()
            out, ok, compare_s, phases = asyncio.run(
                run_class(n, base, db, sampler, pace, plan, browser_nice, browsers)
            )
            everyone_left = time.monotonic()
            figures = store_figures(db, out.owners, plan)
            wall = everyone_left - phases.setup
            script_runs_by_page, cut_short = server_times(Path(env["MTL_TIMING_LOG"]), wall_t0, wall_t0 + wall)
            script_runs = sorted(v for values in script_runs_by_page.values() for v in values)
            time.sleep(15)  # the 10 s session lifetime, and a little more
            after_mb = statistics.median(s.server_mb for s in sampler.samples[-3:])
            sampler.stop.set()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)

    def p50_p95(values: list[float]) -> list[float] | None:
        values = sorted(values)
        return [round(percentile(values, 0.5), 2), round(percentile(values, 0.95), 2)] if values else None

    def r(v):
        return round(v, 1) if isinstance(v, float) else v

    every = [v for kind in out.latencies.values() for _, v in kind]
    by_action: dict[str, list[float]] = {}
    for kind in out.latencies.values():
        for label, v in kind:
            by_action.setdefault(label, []).append(v)
    whole = (phases.setup, everyone_left)
    during = (phases.bell, phases.class_over)
    cpu_1s = sorted(s.server_cpu for s in sampler.window(*during))
    watchers = out.watching.get("fragment_runs", [])
    watch_s = phases.watch_until - phases.watch_from
    return {
        "sessions": n,
        "regular_sessions": len(ok),
        "chromium_sessions": len(browser_indices(len(ok), browsers)),
        "hostile": plan.hostile,
        "pace": pace.describe(),
        "failed_sessions": ok.count(False),
        "exceptions": out.exceptions,
        "problems": out.problems[:8],
        "clicks": len(every),
        "click_p50_s": p50_p95(every)[0] if every else None,
        "click_p95_s": p50_p95(every)[1] if every else None,
        "chromium_p50_p95_s": p50_p95([v for _, v in out.latencies["browser"]]),
        # the same without the first page load of each tab (a new session's first script run and the
        # page's scripts): the clicks of a student who is already on the page
        "chromium_clicks_p50_p95_s": p50_p95([v for a, v in out.latencies["browser"] if a != "load the app"]),
        "thin_p50_p95_s": p50_p95([v for _, v in out.latencies["thin"]]),
        "p50_p95_s_by_action": {k: p50_p95(v) for k, v in by_action.items()},
        "chromium_seconds_by_action": {
            k: sorted(round(v, 2) for a, v in out.latencies["browser"] if a == k) for k in by_action
        },
        **{k: r(v) for k, v in figures.items()},
        "server_script_runs": len(script_runs),
        "server_script_runs_cut_short": cut_short,
        "server_script_p50_s": round(percentile(script_runs, 0.5), 3) if script_runs else None,
        "server_script_p95_s": round(percentile(script_runs, 0.95), 3) if script_runs else None,
        "server_script_runs_p50_p95_s_by_page": {
            page: [len(v), *p50_p95(v)] for page, v in sorted(script_runs_by_page.items())
        },
        "server_idle_mb": round(idle_mb),
        "server_peak_over_idle_mb": round(sampler.peak(*whole, "server_mb") - idle_mb),
        "server_after_close_over_idle_mb": round(after_mb - idle_mb),
        "workers_peak_mb": round(sampler.peak(*whole, "worker_mb")),
        "server_cpu_pct_mean": round(sampler.mean(*during, "server_cpu")),
        "server_cpu_pct_p95_1s": round(percentile(cpu_1s, 0.95)) if cpu_1s else None,
        "class_cpu_pct_of_a_core": {
            k: round(sampler.mean(*during, k)) for k in ("server_cpu", "worker_cpu", "client_cpu", "machine_cpu")
        },
        "watching_tabs": len(watchers),
        "watching_polls_per_tab": watchers,  # script reruns of a fragment (the charts' own pace, for one)
        "watching_live_fetches_per_tab": out.watching.get("live_fetches", []),  # the progress line's
        "watching_long_runs_running": out.watching.get("long_runs_running"),
        "watching_chromium_tab_cpu_pct": out.watching.get("chromium_tab_cpu_pct"),
        "watching_server_cpu_pct": round(sampler.mean(phases.watch_from, phases.watch_until, "server_cpu"))
        if watch_s > 0
        else None,
        "hostile_canvas": out.hostile,
        "chromium_first_loads": out.first_loads,
        # seconds from the store saying a student's run finished to their Train page saying so, unclicked
        "finish_shown_p50_max_s": {
            k: [round(percentile(sorted(v), 0.5), 2), round(max(v), 2)] if v else None
            for k, v in out.finish_shown_s.items()
        },
        "compare_open_all_runs_s": None if compare_s is None else round(compare_s, 2),
        "browsers_nice": browser_nice,
        "setup_s": round(phases.bell - phases.setup, 1),
        "class_s": round(phases.class_over - phases.bell, 1),
        "wall_s": round(wall, 1),
    }


def table(results: list[dict]) -> str:
    head = (
        "| N | failed sessions | exceptions | click p50 / p95 | Chromium p50 / p95 | browserless p50 / p95 "
        "| queue wait p50 / p95 / max | short jobs finished once | long runs (paused) "
        "| server memory peak over idle | server CPU mean / p95 | CPU, tabs watching (server; a Chromium tab) "
        "| hostile: too large |"
    )
    lines = [head, "|" + "---|" * 13]

    def pair(v: list[float] | None) -> str:
        return f"{v[0]} / {v[1]} s" if v else "-"

    for r in results:
        h = r["hostile_canvas"]
        hostile = (
            "-"
            if not r["hostile"]
            else f"{'yes' if h.get('got_too_large') else 'NO'} ({h.get('too_large_seen_in_flood', 0)} in "
            f"{h.get('sent', 0)} msgs at {h.get('rate_per_s')}/s)"
        )
        long_runs = f"{'; '.join(r['long_runs']) or '-'} ({r['long_runs_paused_s']} s)" if r["hostile"] else "-"
        watch = (
            f"{r['watching_server_cpu_pct']}% ({r['watching_tabs']} tabs)"
            if r["watching_server_cpu_pct"] is not None
            else "-"
        )
        if r.get("watching_chromium_tab_cpu_pct") is not None:
            watch += f"; a Chromium tab {r['watching_chromium_tab_cpu_pct']}%"
        lines.append(
            f"| {r['sessions']} | {r['failed_sessions']} | {r['exceptions']} | "
            f"{r['click_p50_s']} / {r['click_p95_s']} s | "
            f"{pair(r['chromium_p50_p95_s'])} | {pair(r['thin_p50_p95_s'])} | "
            f"{r['queue_wait_p50_s']} / {r['queue_wait_p95_s']} / {r['queue_wait_max_s']} s | "
            f"{r['jobs_finished_exactly_once']}/{r['jobs_submitted']} (lost or doubled: {r['lost_or_duplicated']}) | "
            f"{long_runs} | {r['server_peak_over_idle_mb']:+} MB (idle {r['server_idle_mb']} MB) | "
            f"{r['server_cpu_pct_mean']}% / {r['server_cpu_pct_p95_1s']}% of a core | {watch} | {hostile} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[10, 20, 30], help="students, hostile ones included")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--arrive-s", type=float, default=60.0, help="sessions arrive evenly over this long")
    ap.add_argument("--think-s", type=float, default=3.0, help="pause between one session's actions")
    ap.add_argument("--lockstep", action="store_true", help="no arrival spread, no pauses (--arrive-s 0 --think-s 0)")
    ap.add_argument(
        "--browser-nice", type=int, default=0, help="lower the browsers' CPU group and processes by this much"
    )
    ap.add_argument("--browsers", type=int, default=5, help="sessions in Chromium; the rest are thin_client.py ones")
    ap.add_argument("--data-dir", default=None, help="the server's MTL_DATA_DIR (default: yours, else ../shared/data)")
    ap.add_argument("--short-epochs", type=int, default=2, help="epochs of each student's hard-sharing run")
    ap.add_argument("--hostile", action=argparse.BooleanOptionalAction, default=True,
                    help="add the hostile canvas student and the long-jobs student (two of the N)")  # fmt: skip
    ap.add_argument("--hostile-rate", type=float, default=50.0, help="canvas messages a second from the hostile tab")
    ap.add_argument(
        "--hostile-mb", type=float, default=2.1, help="size of the hostile tab's noise picture (over the 2 MB limit)"
    )
    ap.add_argument("--long-epochs", type=int, default=300, help="epochs of each of the two long 4-task CNN runs")
    ap.add_argument("--watchers", type=int, default=5, help="more tabs of the long-jobs student watching its runs")
    ap.add_argument(
        "--watch-s", type=float, default=30.0, help="seconds one Chromium tab watching a long run is measured (0: none)"
    )
    a = ap.parse_args(argv)
    if a.lockstep:
        a.arrive_s = a.think_s = 0.0
    plan = Plan(a.short_epochs, a.long_epochs, a.watchers, a.hostile, a.hostile_rate, a.hostile_mb, a.watch_s)
    mnist = data_dir(a.data_dir)
    print(f"{os.cpu_count()} cores; server and browsers on this machine (loopback); MTL_DATA_DIR={mnist}", flush=True)
    results = []
    for n in a.sessions:
        if plan.hostile and n < 3:
            ap.error("--hostile needs at least 3 sessions: the hostile one, the long-jobs one and a student")
        result = measure(n, Pace(a.arrive_s, a.think_s, n - 2 if plan.hostile else n), plan, a.browser_nice,
                         a.browsers, mnist)  # fmt: skip
        results.append(result)
        print(json.dumps(result), flush=True)
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
