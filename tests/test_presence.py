"""How often an open tab tells the store it is still there (dashboard/state.py): only while it has something
a closed tab would lose, and as often as the abandon window (MTL_ABANDON_MINUTES) needs."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from dashboard import state
from mtl_core.config import TrainConfig
from mtl_core.store.runs import Limits, RunStore


@pytest.fixture
def runner(tmp_path, monkeypatch) -> SimpleNamespace:
    fake = SimpleNamespace(store=RunStore(tmp_path / "runs.sqlite"), settings=SimpleNamespace(abandon_s=600.0))
    monkeypatch.setattr(state, "get_runner", lambda: fake)
    return fake


@pytest.mark.parametrize(("abandon_s", "every"), [(600, 120), (3600, 120), (60, 15), (2, 1), (0, 0)])
def test_a_tab_notes_itself_a_quarter_of_the_abandon_window_apart(runner, abandon_s, every):
    runner.settings.abandon_s = abandon_s
    assert state.seen_every_s() == every


def test_only_queued_or_waiting_runs_need_the_tab_to_stay_seen(runner):
    store = runner.store
    config = TrainConfig.preset("hard", data="synthetic", epochs=3).to_dict()
    assert not state.has_waiting_work("ann")
    run_id = store.create_run(config, owner="ann")
    assert state.has_waiting_work("ann")  # queued: cancelled if her tab is gone
    assert store.claim_next("w", os.getpid()) == run_id
    assert not state.has_waiting_work("ann")  # training: never cancelled that way, no need to poll
    # more runs than her cap: the rest wait their turn in the store, which a closed tab would also lose
    points = [(f"p{i}", config) for i in range(3)]
    store.queue_in_turn(points, owner="ann", limits=Limits(per_owner=1, per_client=100, total=100))
    assert state.has_waiting_work("ann")
    assert not state.has_waiting_work("bob")
