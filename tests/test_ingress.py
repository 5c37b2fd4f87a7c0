"""The per-tab budget on what a browser may send (dashboard/ingress.py) and its place in the server."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import MagicMock

import pytest

from dashboard import serve
from dashboard.ingress import Allowance, IngressBudget, IngressLimits
from mtl_core.settings import SettingError

LIMITS = IngressLimits(bytes_per_s=1_000_000, burst_bytes=4_000_000, messages_per_s=10, burst_messages=40)


def test_a_tab_within_its_burst_never_waits():
    a = Allowance(LIMITS, now=0.0)
    assert all(a.take(10_000, now=0.0) == 0.0 for _ in range(39))
    assert a.take(3_000_000, now=0.0) == 0.0  # the 40th message, 3.39 MB in all: still inside both bursts


def test_past_the_burst_each_message_waits_one_share_of_the_rate():
    a = Allowance(LIMITS, now=0.0)
    for _ in range(40):
        a.take(100, now=0.0)
    assert a.take(100, now=0.0) == pytest.approx(0.1)  # one message owed at 10 a second
    assert a.take(100, now=0.1) == pytest.approx(0.1)  # paid on time: the next one owes the same


def test_big_messages_wait_for_their_bytes():
    a = Allowance(LIMITS, now=0.0)
    assert a.take(3_000_000, now=0.0) == 0.0
    assert a.take(3_000_000, now=0.0) == pytest.approx(2.0)  # 2 MB over the 4 MB burst at 1 MB/s
    assert a.take(3_000_000, now=4.0) == pytest.approx(1.0)  # 2 s paid the debt, 2 more refilled 2 of the 3 MB


def test_an_idle_tab_gets_its_burst_back_and_no_more():
    a = Allowance(LIMITS, now=0.0)
    a.take(4_000_000, now=0.0)
    assert a.take(1_000_000, now=1000.0) == 0.0
    assert a.bytes_left == pytest.approx(3_000_000)  # refilled to the burst, not to 1000 s of rate


class FakeTime:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def run_connection(messages: list[dict], scope_type: str = "websocket", limits: IngressLimits = LIMITS):
    """Feed `messages` to an app behind IngressBudget that reads them all; what it read, and the time."""
    t = FakeTime()
    inbox = list(messages)
    read: list[dict] = []

    async def receive():
        return inbox.pop(0)

    async def app(scope, receive, send):
        for _ in messages:
            read.append(await receive())

    budget = IngressBudget(app, limits, clock=t.clock, sleep=t.sleep)
    # in a thread of its own: the browser tests' Playwright may hold a running event loop in this one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, budget({"type": scope_type}, receive, None)).result()
    return read, t, budget


def msg(i: int, size: int = 100) -> dict:
    return {"type": "websocket.receive", "bytes": bytes([i % 256]) * size}


def test_a_flood_is_slowed_to_the_rate_and_nothing_is_lost_or_reordered():
    sent = [msg(i) for i in range(60)]
    read, t, budget = run_connection(sent)
    assert read == sent
    # 40 at once, then 20 more at 10 a second: the app took its 60th message 2 s in (the wait before a
    # 61st is never taken, as none is read)
    assert t.now == pytest.approx(1.9)
    assert budget.waited_s == pytest.approx(1.9)


def test_picture_floods_are_slowed_by_bytes():
    sent = [msg(i, 2_100_000) for i in range(10)]  # the load benchmark's hostile pictures
    read, t, _ = run_connection(sent)
    assert read == sent
    assert t.now == pytest.approx((10 * 2.1e6 - 4e6 - 2.1e6) / 1e6)  # all but the burst, at 1 MB/s


def test_http_requests_and_connects_are_not_counted():
    read, t, _ = run_connection([{"type": "websocket.connect"}] * 100)
    assert len(read) == 100 and t.slept == []
    read, t, _ = run_connection([{"type": "http.request", "body": b"x" * 10_000_000}] * 3, scope_type="http")
    assert len(read) == 3 and t.slept == []


def test_the_rates_come_from_the_environment_and_are_checked(monkeypatch):
    monkeypatch.setenv("MTL_INGRESS_BYTES_PER_S", "250000")
    monkeypatch.setenv("MTL_INGRESS_MESSAGES_PER_S", "4")
    lim = IngressLimits.from_env()
    assert (lim.bytes_per_s, lim.messages_per_s) == (250_000, 4)
    monkeypatch.setenv("MTL_INGRESS_MESSAGES_PER_S", "0")
    with pytest.raises(SettingError, match="MTL_INGRESS_MESSAGES_PER_S='0' is not usable"):
        IngressLimits.from_env()


def test_the_server_puts_the_static_cache_and_the_budget_in_front_of_streamlits_own_middleware(monkeypatch):
    from streamlit.web.server.starlette import starlette_app

    from dashboard.static_cache import StaticCache

    own = [m.cls for m in starlette_app.create_streamlit_middleware()]
    monkeypatch.setattr(starlette_app, "create_streamlit_middleware", starlette_app.create_streamlit_middleware)
    serve._install_front_middleware()
    serve._install_front_middleware()  # twice: still once
    built = [m.cls for m in starlette_app.create_streamlit_middleware()]
    assert built == [StaticCache, IngressBudget, *own]
    # and the app Streamlit's server builds reads that list (its runtime is only stored by the builder)
    app = starlette_app.create_starlette_app(runtime=MagicMock())
    assert [m.cls for m in app.user_middleware][:2] == [StaticCache, IngressBudget]
