"""The teacher's page follows the class without a click: a student's run that is queued, starts or is
deleted shows up in the sidebar's counter within about a second (dashboard/sidebar.py, _follow_the_class)."""

from __future__ import annotations

import re
import time

from conftest import TEACHER_TOKEN
from playwright.sync_api import Browser, expect

from mtl_core.config import TrainConfig
from mtl_core.store.runs import RunStore

T = 60_000


def test_the_teachers_counter_follows_a_students_run_without_a_click(
    browser: Browser, browser_context_args, fresh_server, tmp_path
):
    context = browser.new_context(**browser_context_args)
    try:
        page = context.new_page()
        page.goto(f"{fresh_server}/train?teacher={TEACHER_TOKEN}")
        expect(page.get_by_text("Jobs on this server: 0 running, 0 queued")).to_be_visible(timeout=T)
        page.wait_for_timeout(1500)  # the page has settled; from here on nobody touches it
        store = RunStore(tmp_path / "mtl_home" / "runs.sqlite")  # the fresh server's own store
        config = TrainConfig.preset("hard", epochs=200, batch_size=8, data="synthetic")
        t0 = time.monotonic()
        run_id = store.create_run(config.to_dict(), owner="0123456789ab", label="a student's run")
        counter = page.get_by_text(re.compile(r"Jobs on this server: (1 running, 0 queued|0 running, 1 queued)"))
        expect(counter).to_be_visible(timeout=4_000)  # the goal is 2 s; the poll is 1 s
        seen_after = time.monotonic() - t0
        store.request_stop(run_id, by_teacher=True)  # ends within a batch: the counter falls back
        expect(page.get_by_text("Jobs on this server: 0 running, 0 queued")).to_be_visible(timeout=4_000)
        assert seen_after < 4
    finally:
        context.close()
