"""Polling for a condition with a deadline, for tests that watch other processes (workers, Ray, a server).
A module beside the tests (pytest puts this folder on sys.path), so each test file need not copy it."""

import time


def wait_for(pred, timeout: float = 60.0, every: float = 0.1) -> bool:
    """True as soon as `pred()` is; False once `timeout` seconds have passed without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return False
