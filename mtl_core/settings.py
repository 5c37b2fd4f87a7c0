"""Server settings from the environment (the MTL_* numbers the README lists), each read and checked here: a
wrong value stops the command line or the server at its start with a sentence naming the variable."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


class SettingError(ValueError):
    """An environment setting that cannot be used; the message names the variable and what it takes."""


# A worker's `nice` past 19: Linux's idle scheduling class (MTL_WORKER_NICE=idle, the default;
# mtl_core/jobs/worker.py lower_priority).
IDLE_CLASS = 20


def _raw(name: str) -> str | None:
    text = os.environ.get(name, "").strip()
    return text or None  # set but empty counts as unset, as a shell's `MTL_X= cmd` means


def env_int(name: str, default: int, lo: int, hi: int | None = None) -> int:
    """Whole number `name` from the environment, `default` when unset; SettingError outside lo..hi."""
    text = _raw(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        span = f"from {lo:,} to {hi:,}" if hi is not None else f"of at least {lo:,}"
        raise SettingError(f"{name}={text[:40]!r} is not usable: it must be a whole number {span}")
    return value


def env_float(name: str, default: float, lo: float, hi: float | None = None) -> float:
    """Number `name` from the environment, `default` when unset; SettingError if not finite or outside lo..hi."""
    text = _raw(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        span = f"from {lo:g} to {hi:g}" if hi is not None else f"of at least {lo:g}"
        raise SettingError(f"{name}={text[:40]!r} is not usable: it must be a number {span}")
    return value


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """One of `choices` (any case) from the environment, `default` when unset; SettingError otherwise."""
    text = _raw(name)
    if text is None:
        return default
    if text.lower() not in choices:
        raise SettingError(f"{name}={text[:40]!r} is not usable: it must be one of {', '.join(choices)}")
    return text.lower()
