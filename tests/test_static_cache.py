"""Streamlit's immutable files answered from memory after their first answer (dashboard/static_cache.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from dashboard import static_cache
from dashboard.static_cache import StaticCache

IMMUTABLE = (b"cache-control", b"public, immutable, max-age=31536000")


class FileApp:
    """Stands in for Streamlit's static handler: answers each request with `headers` and `chunks`."""

    def __init__(self, headers=(IMMUTABLE,), chunks=(b"console.log(1);",), status=200):
        self.headers, self.chunks, self.status, self.calls = list(headers), list(chunks), status, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        for i, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(self.chunks) - 1})


def request(cache, path="/static/js/index.abc123.js", method="GET", headers=(), kind="http"):
    """What the client received: (status, headers, body)."""
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": kind, "method": method, "path": path, "query_string": b"", "headers": list(headers)}
    with ThreadPoolExecutor(1) as pool:  # a loop of its own: the browser tests leave one running here
        pool.submit(asyncio.run, cache(scope, receive, send)).result()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], start["headers"], body


def test_an_immutable_file_is_answered_from_memory_as_streamlit_answered_it():
    app = FileApp(headers=[IMMUTABLE, (b"content-type", b"text/javascript"), (b"etag", b'"x"')],
                  chunks=[b"a" * 65536, b"b" * 10, b"c"])  # fmt: skip
    cache = StaticCache(app)
    first = request(cache)
    second = request(cache)
    assert app.calls == 1 and cache.hits == 1
    assert second == first == (200, app.headers, b"a" * 65536 + b"b" * 10 + b"c")
    assert cache.kept_bytes == 65547
    request(cache, path="/static/js/other.def456.js")  # another address: its own first answer
    assert app.calls == 2


@pytest.mark.parametrize(
    "app",
    [
        FileApp(headers=[(b"cache-control", b"no-cache")]),  # not immutable: may change (index.html)
        FileApp(status=404),
        FileApp(headers=[IMMUTABLE, (b"set-cookie", b"s=1")]),
        FileApp(headers=[IMMUTABLE, (b"content-encoding", b"gzip")]),
        FileApp(headers=[IMMUTABLE, (b"vary", b"accept-encoding")]),
    ],
    ids=["not-immutable", "not-found", "sets-a-cookie", "compressed", "varies"],
)
def test_an_answer_that_may_differ_between_requests_is_never_kept(app):
    cache = StaticCache(app)
    request(cache)
    request(cache)
    assert app.calls == 2 and cache.hits == 0 and not cache.kept


@pytest.mark.parametrize(
    "kind, method, path, headers",
    [
        ("http", "GET", "/static/js/index.abc123.js", [(b"Range", b"bytes=0-10")]),
        ("http", "GET", "/static/js/index.abc123.js", [(b"If-None-Match", b'"x"')]),
        ("http", "HEAD", "/static/js/index.abc123.js", []),
        ("http", "GET", "/_stcore/health", []),
        ("http", "GET", "/", []),
    ],
    ids=["range", "conditional", "head", "not-static", "page"],
)
def test_requests_that_need_streamlit_go_to_streamlit_even_when_the_file_is_kept(kind, method, path, headers):
    app = FileApp()
    cache = StaticCache(app)
    request(cache)  # kept now
    request(cache, path=path, method=method, headers=headers, kind=kind)
    assert app.calls == 2 and cache.hits == 0


def test_memory_is_bounded_per_file_and_in_all(monkeypatch):
    monkeypatch.setattr(static_cache, "MAX_FILE_BYTES", 100)
    monkeypatch.setattr(static_cache, "MAX_TOTAL_BYTES", 150)
    app = FileApp(chunks=[b"x" * 60, b"x" * 60])  # 120 bytes: over the file limit
    cache = StaticCache(app)
    assert request(cache)[2] == b"x" * 120  # still answered whole by Streamlit
    assert not cache.kept
    app.chunks = [b"y" * 80]
    request(cache, path="/static/a.js")
    request(cache, path="/static/b.js")  # 160 bytes in all: over the total
    assert list(cache.kept) == [("/static/a.js", b"")] and cache.kept_bytes == 80


def test_the_prefix_follows_the_servers_base_path():
    app = FileApp()
    cache = StaticCache(app, prefix="/class/static/")
    for _ in range(2):
        request(cache, path="/class/static/js/index.abc123.js")
    request(cache)  # /static/... is not under this server's base path
    assert cache.hits == 1 and app.calls == 2
