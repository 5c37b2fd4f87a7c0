"""Streamlit's own scripts and styles, answered from memory once they have been served.

A first visit asks for about 60 of Streamlit's frontend files. Streamlit answers each with Starlette's
FileResponse, which stats, opens, reads and closes the file in worker threads: several hand-offs between
threads per file, each of which waits for Python's GIL while the sessions' scripts run. In the load
benchmark's class of 30 the 60 files then took the server up to 1.4 s (0.06-0.13 s when the class was
quiet), and a first visit cannot draw anything before they are in.

These files are immutable (content-hashed names, `Cache-Control: immutable`), so the first answer is kept,
exactly as Streamlit sent it (status, headers, body), and later requests for the same address get it from
memory in one piece on the event loop. Only plain full GETs are answered here; a conditional or range
request, a response that sets a cookie or varies, and anything not immutable go to Streamlit as before.
`dashboard/serve.py` installs this as ASGI middleware in front of Streamlit's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_FILE_BYTES = 8_000_000  # Streamlit's largest script chunk is about 4 MB
MAX_TOTAL_BYTES = 64_000_000  # all of Streamlit's static folder is about 26 MB
_PASS_REQUEST = {b"range", b"if-none-match", b"if-modified-since", b"if-range"}
_PASS_RESPONSE = {b"set-cookie", b"vary", b"content-encoding", b"content-range"}


class StaticCache:
    """ASGI middleware: GET requests under `prefix` whose first answer was a complete, immutable 200 are
    answered from memory afterwards."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], prefix: str = "/static/"):
        self.app, self.prefix = app, prefix
        self.kept: dict[tuple[str, bytes], tuple[int, list[tuple[bytes, bytes]], bytes]] = {}
        self.kept_bytes = 0
        self.hits = 0  # read by tests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._cacheable_request(scope):
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope.get("query_string", b""))
        kept = self.kept.get(key)
        if kept is not None:
            self.hits += 1
            status, headers, body = kept
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        start: Message = {}
        chunks: list[bytes] = []
        size = 0

        async def keeping(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and start:
                size += len(message.get("body", b""))
                if size <= MAX_FILE_BYTES:
                    chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._keep(key, start, b"".join(chunks), size)
            await send(message)

        await self.app(scope, receive, keeping)

    def _cacheable_request(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "GET":
            return False
        if not scope.get("path", "").startswith(self.prefix):
            return False
        return not any(name.lower() in _PASS_REQUEST for name, _ in scope.get("headers", []))

    def _keep(self, key: tuple[str, bytes], start: Message, body: bytes, size: int) -> None:
        headers = [(bytes(n), bytes(v)) for n, v in start.get("headers", [])]
        names = {n.lower() for n, _ in headers}
        immutable = any(n.lower() == b"cache-control" and b"immutable" in v.lower() for n, v in headers)
        if start.get("status") != 200 or not immutable or names & _PASS_RESPONSE:
            return
        if size > MAX_FILE_BYTES or self.kept_bytes + size > MAX_TOTAL_BYTES:  # (over it, body is cut short)
            return
        if key not in self.kept:
            self.kept[key] = (200, headers, body)
            self.kept_bytes += size
