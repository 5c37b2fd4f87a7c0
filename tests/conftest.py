"""Shared fixtures: synthetic data, real MNIST when ../shared has it, a fresh run store per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dashboard.serve import _router_from_the_first_request

_router_from_the_first_request()  # AppTest runs app.py beside pages/ as the server does

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def real_mnist_dir() -> Path | None:
    """Full MNIST for tests: $MTL_TEST_DATA_DIR, else ../shared/data when present, else None."""
    env = os.environ.get("MTL_TEST_DATA_DIR")
    candidates = [Path(env)] if env else [SHARED_DATA]
    for c in candidates:
        if (c / "MNIST" / "raw").is_dir():
            return c
    return None


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Runs and caches go to a temp folder, never the user's home; full MNIST comes from ../shared
    when present (read-only is fine) and is otherwise absent, so "auto" falls back to the subset."""
    home = tmp_path_factory.mktemp("mtl_home")
    monkeypatch.setenv("MTL_HOME", str(home))
    data_dir = real_mnist_dir()
    monkeypatch.setenv("MTL_DATA_DIR", str(data_dir) if data_dir else str(home / "no-mnist"))


@pytest.fixture(autouse=True)
def _no_runner_outlives_its_test():
    """Every server runner a test started (an AppTest page starts one) is shut down with its workers when
    the test ends. Left alive, their workers went on training the test's queued runs for the rest of the
    suite: 28 of them at once by mid-suite, slowing every later test."""
    yield
    runner = sys.modules.get("mtl_core.jobs.runner")
    if runner is not None:
        runner.shutdown_server_runners()


@pytest.fixture(scope="session")
def mnist_dir() -> Path | None:
    return real_mnist_dir()


@pytest.fixture(scope="session")
def synthetic():
    from mtl_core.data import make_synthetic

    return make_synthetic(n_train=512, n_test=256, seed=0)


@pytest.fixture(scope="session")
def real_data():
    """Full MNIST when ../shared has it, else the embedded 5,000-digit subset: real digits either way."""
    from mtl_core.data import load_cached_mnist, load_subset

    d = real_mnist_dir()
    return load_cached_mnist(d) if d else load_subset()


@pytest.fixture
def store(tmp_path):
    from mtl_core.store.runs import RunStore

    return RunStore(tmp_path / "runs.sqlite")
