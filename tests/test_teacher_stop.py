"""A run the teacher stops says so to its student (not "Stop was pressed"), and to the teacher who did."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from mtl_core.config import TrainConfig
from mtl_core.store.runs import STOPPED_BY_TEACHER

CFG = TrainConfig.preset("hard", epochs=10, data="synthetic").to_dict()


@pytest.mark.parametrize("by_teacher, flag", [(False, 1), (True, STOPPED_BY_TEACHER)])
def test_the_store_records_who_stopped_a_run(store, by_teacher, flag):
    running, queued = store.create_run(CFG, owner="alice"), store.create_run(CFG, owner="alice")
    assert store.claim_next("w") == running
    for run_id in (running, queued):
        store.request_stop(run_id, by_teacher=by_teacher)
        assert store.get_run(run_id)["stop_requested"] == flag and store.stop_requested(run_id)
    assert store.get_run(queued)["status"] == "cancelled"


def _status_lines(teacher: bool, run: dict) -> list[str]:
    def page(run: dict, teacher: bool):
        import streamlit as st

        from dashboard.monitor import status_ui

        st.session_state["owner"] = "teacher-browser" if teacher else "alice"
        st.session_state["teacher"] = teacher
        status_ui(run, [{}] * run["_done"])

    at = AppTest.from_function(page, args=(run, teacher)).run()
    assert not at.exception, [e.value for e in at.exception]
    return [w.value for w in at.warning]


RUN = {
    "id": "r1",
    "owner": "alice",
    "status": "cancelled",
    "reason": "Stop was pressed during epoch 4",
    "config": {"epochs": 10},
    "best_epoch": 3,
    "stop_requested": STOPPED_BY_TEACHER,
    "_done": 3,
}


def test_the_student_reads_that_the_teacher_stopped_the_run():
    (line,) = _status_lines(False, RUN)
    assert line.startswith("Your teacher stopped this run after 3 epochs of 10.")
    assert "Stop was pressed" not in line and "best epoch (3) are kept" in line
    (before,) = _status_lines(False, RUN | {"_done": 0, "best_epoch": None})
    assert before.startswith("Your teacher stopped this run before its first epoch finished")


def test_the_teacher_reads_that_they_stopped_it_and_an_own_stop_reads_as_before():
    (line,) = _status_lines(True, RUN)
    assert line.startswith("You stopped this student's run (teacher) after 3 epochs of 10.")
    (own,) = _status_lines(False, RUN | {"stop_requested": 1})
    assert own.startswith("Stopped after 3 epochs of 10: Stop was pressed during epoch 4.")
