"""A dashboard session without a browser: Streamlit's websocket protocol, spoken directly.

`benchmarks/load.py` uses it to put a whole class on the server while only some sessions run a real
Chromium. One headless Chromium session costs this machine about 5-7 CPU-seconds (most of it the
frontend's JavaScript), against about 0.5 s for the server; 30 of them on the server's own 2 cores
measure the browsers, not the server. In a class each student's browser runs on the student's computer.

A thin session does what the browser does on the wire, as recorded from Chromium's websocket frames:
it fetches the page and the static files it names, opens `/_stcore/stream`, sends a `rerun_script`
BackMsg for each click (the query string, the page's script hash, the widgets it changed, a trigger
for a button), and reruns each fragment at the interval the server asks for (`auto_rerun`) until told
to stop. A run's live progress line (dashboard/live.py) is kept as the browser keeps it: its address
fetched every `poll_ms`, and one rerun of its fragment, with the component's trigger, when the run's state
changes or new epochs are in and its charts are due. Widgets are found by the key at the end of their
element id. It renders nothing: an action's time runs from sending its message to the end of the script
run that sent the awaited text, so it holds the server's work, its queueing behind other sessions, and
the loopback network.

Cookies: the one script of the app's own that a browser runs is the cookie writer
(dashboard/identity.py), which puts the signed identity into `document.cookie`; a thin session keeps
what it writes and sends it with its page fetches and websocket handshake, as the browser's cookie jar
does, so a second tab (`ThinSession(base, cookies=first.cookies)`) is the same student.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import urllib.request
from collections.abc import Callable

import websockets
from PIL import Image, ImageDraw
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

FULL_RUN_DONE = (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR)
COOKIE_WRITER = "mtl_cookie_writer"  # dashboard/identity.py's component: its data is the cookies it sets
LIVE_PROGRESS = "mtl_live_progress"  # dashboard/live.py's component: its data says what to fetch and how often


def _texts(element) -> list[str]:
    """What a reader would find on the page for one element: its body, label, value or options."""
    kind = element.WhichOneof("type")
    if kind is None:
        return []
    inner = getattr(element, kind)
    out = []
    for field in ("body", "label", "text", "value", "default"):
        value = getattr(inner, field, None)
        if isinstance(value, str) and value:
            out.append(value)
    return out


class ThinSession:
    """One student's tab. `act()` sends a click and waits until the awaited text is on the page."""

    def __init__(self, base: str, timeout_s: float = 120.0, cookies: dict[str, str] | None = None):
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s
        self.cookies: dict[str, str] = dict(cookies or {})  # this browser's cookie jar (name -> value)
        self.ws = None
        self.pages: dict[str, str] = {}  # url path ("" for the home page) -> page script hash
        self.page_hash = ""
        self.path = ""
        self.query = ""
        self.widget_ids: dict[str, str] = {}  # widget key -> element id
        self.sticky: dict[str, WidgetState] = {}  # values a browser keeps sending on every rerun
        self.seen: list[str] = []  # texts drawn since the last action began
        self.exceptions: list[str] = []
        self.finished = asyncio.Condition()
        self.full_runs = 0
        self.fragment_runs = 0  # fragment reruns the server finished (the polls it asked for)
        self.last_status = ""
        self.closed = ""
        self._fragments: dict[str, asyncio.Task] = {}
        self._live: dict[str, asyncio.Task] = {}  # live progress lines on the page, by component id
        self.live_fetches = 0
        self._reader: asyncio.Task | None = None

    # --- the connection -------------------------------------------------------------------------
    async def open(self, path: str = "") -> None:
        """What a browser's first visit costs the server: the page, its static files, the websocket."""
        await asyncio.to_thread(self._fetch_static, path)
        host = self.base.split("://", 1)[1]
        self.ws = await websockets.connect(
            f"ws://{host}/_stcore/stream",
            subprotocols=["streamlit"],
            max_size=None,
            origin=self.base,
            additional_headers=self._cookie_header(),
        )
        self._reader = asyncio.create_task(self._read())
        self.path = path

    def _cookie_header(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    def _get(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers=self._cookie_header())
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read()

    def _fetch_static(self, path: str = "") -> None:
        html = self._get(f"{self.base}/{path}").decode()
        for ref in re.findall(r'(?:src|href)="\.?/?(static/[^"]+)"', html):
            self._get(f"{self.base}/{ref}")

    async def close(self) -> None:
        for task in self._fragments.values():
            task.cancel()
        self._stop_live()
        if self._reader:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = ForwardMsg()
                msg.ParseFromString(raw)
                await self._handle(msg)
        except websockets.ConnectionClosed as exc:
            self.closed = str(exc)
        else:
            self.closed = "by the server"

    async def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            which = element.WhichOneof("type")
            if which == "exception":
                self.exceptions.append(element.exception.message[:200])
            inner = getattr(element, which) if which else None
            element_id = getattr(inner, "id", "") if inner is not None else ""
            if isinstance(element_id, str) and element_id.startswith("$$ID-"):
                self.widget_ids[element_id.split("-", 2)[2]] = element_id
            if which == "bidi_component" and element.bidi_component.component_name == COOKIE_WRITER:
                self._write_cookies(element.bidi_component.json)
            if which == "bidi_component" and element.bidi_component.component_name == LIVE_PROGRESS:
                self._follow_live(element.bidi_component, msg.delta.fragment_id)
            self.seen.extend(_texts(element))
        elif kind == "new_session" and not msg.metadata.run.fragment_ids:
            self._stop_live()  # a full run starts (not a fragment's): the page is drawn anew, its live lines with it
        elif kind == "navigation":
            self.pages = {p.url_pathname: p.page_script_hash for p in msg.navigation.app_pages}
            self.page_hash = msg.navigation.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "auto_rerun":
            fragment = msg.auto_rerun.fragment_id
            if fragment in self._fragments:
                self._fragments[fragment].cancel()
            self._fragments[fragment] = asyncio.create_task(self._poll(fragment, msg.auto_rerun.interval))
        elif kind == "stop_auto_rerun":
            for fragment in msg.stop_auto_rerun.fragment_ids:
                task = self._fragments.pop(fragment, None)
                if task:
                    task.cancel()
        elif kind == "script_finished":
            async with self.finished:
                self.last_status = ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)
                if msg.script_finished in FULL_RUN_DONE:
                    self.full_runs += 1
                elif msg.script_finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY:
                    self.fragment_runs += 1
                self.finished.notify_all()

    def _write_cookies(self, data: str) -> None:
        """What the cookie writer's script does in the browser: each cookie set, or deleted at max_age 0."""
        try:
            cookies = json.loads(data or "{}").get("cookies") or []
        except (ValueError, AttributeError):
            return
        for c in cookies:
            if int(c.get("max_age", 0)) > 0:
                self.cookies[c["name"]] = c["value"]
            else:
                self.cookies.pop(c["name"], None)

    def _follow_live(self, component, fragment: str) -> None:
        """What the live progress line's script does in the browser (dashboard/live.py's _JS)."""
        data = json.loads(component.json or "{}")
        old = self._live.pop(component.id, None)
        if old:
            old.cancel()
        self._live[component.id] = asyncio.create_task(self._poll_live(component.id, data, fragment))

    def _stop_live(self) -> None:
        for task in self._live.values():
            task.cancel()
        self._live.clear()

    async def _poll_live(self, component_id: str, data: dict, fragment: str) -> None:
        from streamlit.components.v2.bidi_component.main import _make_trigger_id

        first, drawn = data["state"], time.monotonic()
        while True:
            await asyncio.sleep(data["poll_ms"] / 1000)
            try:
                now = json.loads(await asyncio.to_thread(self._get, self.base + data["url"]))
            except (OSError, ValueError):
                continue  # as the browser: try again next turn
            self.live_fetches += 1
            changed = now["status"] != first["status"] or (first["epochs"] == 0 and now["epochs"] > 0)
            charts_due = now["epochs"] > first["epochs"] and time.monotonic() - drawn >= data["chart_every_ms"] / 1000
            if changed or charts_due:
                payload = json.dumps([{"event": "changed", "value": f"{now['status']}:{now['epochs']}"}])
                trigger = WidgetState(id=_make_trigger_id(component_id, "events"), json_trigger_value=payload)
                await self._send(fragment_id=fragment, raw=[trigger], auto=False)
                return

    async def _poll(self, fragment: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._send(fragment_id=fragment)

    async def _send(
        self,
        widgets: dict[str, WidgetState] | None = None,
        fragment_id: str = "",
        raw: list[WidgetState] | None = None,
        auto: bool = True,
    ) -> None:
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        if not self.page_hash:
            state.page_name = self.path
        if fragment_id:
            state.fragment_id = fragment_id
            state.is_auto_rerun = auto
        for key, value in {**self.sticky, **(widgets or {})}.items():
            if key in self.widget_ids:
                entry = state.widget_states.widgets.add()
                entry.CopyFrom(value)
                entry.id = self.widget_ids[key]
        for entry in raw or []:  # widget states by their full id (a component's trigger)
            state.widget_states.widgets.add().CopyFrom(entry)
        ctx = state.context_info
        ctx.timezone, ctx.locale, ctx.url, ctx.color_scheme = "UTC", "en-US", f"{self.base}/{self.path}", "light"
        await self.ws.send(msg.SerializeToString())

    # --- what a student does --------------------------------------------------------------------
    async def send(self, widgets: dict[str, WidgetState]) -> None:
        """One rerun message, awaiting nothing: what the browser sends when a widget changes, even while
        the run its last change started is still going."""
        await self._send(widgets)

    async def act(self, awaited: Callable[[list[str]], bool], widgets: dict[str, WidgetState] | None = None) -> float:
        """Send one rerun and wait for a full run that drew what `awaited` looks for; its seconds."""
        for task in self._fragments.values():  # a full rerun registers its fragments again
            task.cancel()
        self._fragments.clear()
        self.seen = []
        runs = self.full_runs
        t0 = time.perf_counter()
        await self._send(widgets)
        await self.wait_for(awaited, after_full_runs=runs)
        return time.perf_counter() - t0

    async def wait_for(self, awaited: Callable[[list[str]], bool], after_full_runs: int = -1, timeout_s: float = 0):
        """Until a script run (full or fragment) has finished with `awaited` true of the texts drawn."""

        def ready() -> bool:
            return self.full_runs > after_full_runs and awaited(self.seen)

        try:
            async with self.finished:
                await asyncio.wait_for(self.finished.wait_for(ready), timeout_s or self.timeout_s)
        except TimeoutError:
            closed = f"connection closed ({self.closed})" if self.closed else "connection open"
            raise TimeoutError(
                f"{closed}; full runs {after_full_runs} -> {self.full_runs}, last run ended {self.last_status}, "
                f"last texts {self.seen[-3:]}"
            ) from None

    async def load(self, path: str = "", heading: str = "Multi-task learning playground") -> float:
        """A page opened by its address (the home page, or e.g. "train" for a tab kept on Train)."""
        t0 = time.perf_counter()
        await self.open(path)
        self.seen = []
        await self._send()
        await self.wait_for(has(heading), after_full_runs=0)
        return time.perf_counter() - t0

    async def go(self, path: str, heading: str) -> float:
        """A click on a sidebar link: the new page's script, the query string dropped as the browser does. The
        browser clears the old page's elements at once, so its live progress lines stop there."""
        self._stop_live()
        self.page_hash, self.path, self.query = self.pages[path], path, ""
        return await self.act(has(heading))


def has(text: str | re.Pattern) -> Callable[[list[str]], bool]:
    if isinstance(text, re.Pattern):
        return lambda seen: any(text.search(s) for s in seen)
    return lambda seen: any(text in s for s in seen)


def value(**kind) -> WidgetState:
    """A widget's value as the browser sends it, e.g. value(string_value="x"), value(trigger_value=True)."""
    return WidgetState(**kind)


def stroke_json(size: int = 280, width: int = 18) -> str:
    """The canvas component's value after one vertical stroke (a '1'), in the shape Chromium sends:
    fabric's drawing (one path) and the canvas as a PNG data URL."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    top, bottom = int(size * 0.2), int(size * 0.8)
    ImageDraw.Draw(img).line([(size // 2, top), (size // 2, bottom)], fill=(255, 255, 255, 255), width=width)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = {"type": "Path", "version": "7.4.0", "originX": "center", "originY": "center", "left": size / 2,
            "top": size / 2, "width": 0, "height": bottom - top, "stroke": "#FFFFFF", "strokeWidth": width,
            "path": [["M", size / 2, top], ["L", size / 2, bottom]]}  # fmt: skip
    raw = {"version": "7.4.0", "objects": [path], "background": "#000000"}
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"drawing": {"raw": raw, "data": png}})
