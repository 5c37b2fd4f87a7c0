"""A budget for what one browser tab may send the server: bytes and messages a second, per websocket.

Every message a tab sends (a click, a slider, a canvas picture) makes the server parse it and rerun that
tab's page. A careful student sends a few a second; a hostile one can send fifty canvas pictures of
2 MB a second, and the server then spends most of a core taking them in while the workers that train
everyone's runs wait for CPU. Past its budget a tab's next message is simply read later: the websocket
server reads no further message from that socket until the app has taken the last one, so the tab's own
sending slows down (TCP backpressure) and nothing is dropped or reordered, so a fast but honest user
loses no click, only waits. `dashboard/serve.py` installs this as ASGI middleware in front of Streamlit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mtl_core.settings import env_float

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class IngressLimits:
    """What one tab may send: a sustained rate and a burst, in bytes and in messages.

    A burst of 4 MB takes the largest message the server accepts (server.maxWidgetStateSize, 3 MB) at
    once; 40 messages cover a person clicking fast and a page's timed fragment reruns several times over."""

    bytes_per_s: float = 250_000
    burst_bytes: float = 4_000_000
    messages_per_s: float = 10
    burst_messages: float = 40

    @classmethod
    def from_env(cls) -> IngressLimits:
        """MTL_INGRESS_BYTES_PER_S and MTL_INGRESS_MESSAGES_PER_S change the sustained rates (bursts stay)."""
        d = cls()
        return cls(
            bytes_per_s=env_float("MTL_INGRESS_BYTES_PER_S", d.bytes_per_s, 10_000),
            burst_bytes=d.burst_bytes,
            messages_per_s=env_float("MTL_INGRESS_MESSAGES_PER_S", d.messages_per_s, 0.5),
            burst_messages=d.burst_messages,
        )


@dataclass
class Allowance:
    """Two token buckets (bytes, messages) that may go into debt by one message: a message is always
    taken, and `take` says how long to wait before the next one so that the debt is paid off."""

    limits: IngressLimits
    now: float
    bytes_left: float = field(init=False)
    messages_left: float = field(init=False)

    def __post_init__(self) -> None:
        self.bytes_left = self.limits.burst_bytes
        self.messages_left = self.limits.burst_messages

    def take(self, n_bytes: int, now: float) -> float:
        """Count one message of `n_bytes` sent at `now`; the seconds to wait before reading another."""
        lim = self.limits
        elapsed = max(0.0, now - self.now)
        self.now = now
        self.bytes_left = min(lim.burst_bytes, self.bytes_left + elapsed * lim.bytes_per_s) - n_bytes
        self.messages_left = min(lim.burst_messages, self.messages_left + elapsed * lim.messages_per_s) - 1
        return max(0.0, -self.bytes_left / lim.bytes_per_s, -self.messages_left / lim.messages_per_s)


class IngressBudget:
    """ASGI middleware: each websocket connection gets its own Allowance; HTTP passes untouched."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        limits: IngressLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.app, self.limits = app, limits or IngressLimits.from_env()
        self.clock, self.sleep = clock, sleep
        self.waited_s = 0.0  # across all connections; read by tests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        allowance = Allowance(self.limits, self.clock())
        owed = 0.0

        async def paced_receive() -> Message:
            nonlocal owed
            if owed > 0:  # waited here, before reading, so the socket stays unread meanwhile
                self.waited_s += owed
                await self.sleep(owed)
            message = await receive()
            if message["type"] == "websocket.receive":
                payload = message.get("bytes") or message.get("text") or b""
                owed = allowance.take(len(payload), self.clock())
            return message

        await self.app(scope, paced_receive, send)
