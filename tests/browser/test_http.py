"""The page's own files, as a first visit asks for them: many over each kept-alive connection."""

from __future__ import annotations

import http.client
import re
import statistics
import time
import urllib.parse
import urllib.request


def test_a_first_visits_files_come_back_to_back_on_one_kept_alive_connection(streamlit_server):
    """A first visit asks for about 60 scripts and styles over six connections. Each answer after the first
    on a connection once waited 44 ms for the browser's delayed ACK (dashboard/serve.py,
    _answer_without_delay); on loopback one takes about a millisecond."""
    html = urllib.request.urlopen(streamlit_server + "/", timeout=30).read().decode()
    files = re.findall(r'(?:href|src)="\.?/?(static/[^"]+)"', html)
    assert len(files) >= 20, files
    url = urllib.parse.urlsplit(streamlit_server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    seconds, answers = [], []
    try:
        for _ in range(2):  # the second time from dashboard/static_cache.py's memory
            for name in files:
                t0 = time.perf_counter()
                conn.request("GET", "/" + name)
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200 and body, name
                seconds.append(time.perf_counter() - t0)
                answers.append((name, body, sorted((k, v) for k, v in response.getheaders() if k.lower() != "date")))
    finally:
        conn.close()
    assert statistics.median(seconds[1:]) < 0.02, sorted(round(s * 1000, 1) for s in seconds)
    # The same bytes and headers both times: a file kept in memory is the file Streamlit served.
    assert answers[: len(files)] == answers[len(files) :]
    scripts = [dict((k.lower(), v) for k, v in h) for name, _, h in answers if "/js/" in name]
    assert scripts and all("immutable" in h["cache-control"] for h in scripts)
