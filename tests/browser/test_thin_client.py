"""The load test's browserless session (benchmarks/thin_client.py) against the real server.

benchmarks/load.py counts its interaction times as a student's, so it must do what a browser does:
reach the page it asks for, queue a job the way the Train form does, see the job finish through the
fragment polls the server asks for, get answers for a drawn digit, keep the identity cookie the page
writes (so a second tab is the same student), and fail loudly when the awaited text never comes. Runs
after test_browser.py (file order), as one more owner, so it changes nothing the browser tests see.
"""

from __future__ import annotations

import asyncio
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from thin_client import ThinSession, has, stroke_json, value  # noqa: E402


def _run(coro):
    """asyncio in its own thread: Playwright's sync API owns this thread's event loop in this session."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_a_thin_session_queues_trains_and_draws_like_a_browser(streamlit_server):
    async def student() -> dict:
        s = ThinSession(streamlit_server, timeout_s=60)
        try:
            await s.load()
            assert "u=" not in s.query  # the identity is a cookie's (or this session's), never the link's
            s.sticky["student_name"] = value(string_value="Thin Student")
            await s.act(has("Thin Student"), {"student_name": s.sticky["student_name"]})
            await s.go("train", "Train")
            await s.act(has("One shared 784-64-32 trunk"), {"train_model": value(string_value="Hard sharing")})
            form = {
                "f_data_hard": value(string_value="synthetic"),
                "f_epochs_hard": value(int_value=2),
                "train_submit_hard": value(trigger_value=True),
            }
            await s.act(has("Watching"), form)
            # Only the monitor's fragment polls can bring this: the full run ended while the job queued.
            await s.wait_for(has(re.compile(r"Finished all 2 epochs")), timeout_s=120)
            polled = len(s._fragments)
            # A second tab of this browser: the cookie the first tab's page wrote makes it the same student.
            tab = ThinSession(streamlit_server, timeout_s=60, cookies=s.cookies)
            try:
                await tab.load("train", "Train")
                same_student = "watch_select" in tab.widget_ids  # "Watching" lists only one's own runs
            finally:
                await tab.close()
            await s.go("draw", "Draw a digit")
            await s.act(has(re.compile(r" → .+ \(P\(.+\) = \d+%\)")), {"canvas": value(json_value=stroke_json())})
            answers = [t for t in s.seen if " → " in t]
            s.timeout_s = 3
            with pytest.raises(asyncio.TimeoutError):  # a text that never comes is a failure, not a pass
                await s.go("compare", "No such heading anywhere")
            return {"polled": polled, "same_student": same_student, "answers": answers, "exceptions": s.exceptions}
        finally:
            await s.close()

    seen = _run(student())
    assert seen["polled"] >= 1, "the Train page's monitor fragment was never re-run"
    assert seen["same_student"], "a second tab with the first one's cookies was not the same student"
    assert len(seen["answers"]) == 2, seen["answers"]  # one answer per task of the hard-sharing pair
    assert seen["exceptions"] == []
