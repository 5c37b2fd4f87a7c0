"""Choosing the fast path's loop in a test: the C++ one (mtl_core/native/__init__.py) or the Python one."""

from __future__ import annotations

import shutil

import pytest


def kernel_device(kernel: str) -> str:
    """The device a test of `kernel` trains on: the C++ loop is the CPU's, pinned (device "auto" keeps the
    MLPs on the CPU anyway; a test must not depend on that); the others follow "auto"."""
    return "cpu" if kernel == "C++" else "auto"


def use_kernel(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Python": switch the C++ loop off for this test. "C++": require it (skipped, with the reason, only
    where this machine has no C++ compiler; `scripts/setup.sh` builds it everywhere else)."""
    from mtl_core import native

    if kernel == "Python":
        monkeypatch.setenv("MTL_NATIVE", "0")
        return
    monkeypatch.setenv("MTL_NATIVE", "1")
    if native.get() is None:
        if shutil.which("c++") is None:
            pytest.skip("no C++ compiler here: the C++ step cannot be built (the Python step is tested)")
        pytest.fail(f"the C++ step should build on this machine: {native.reason()}")
