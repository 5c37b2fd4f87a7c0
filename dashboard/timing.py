"""Script-run times for the load test: with MTL_TIMING_LOG set, every full run of the app appends one
line (end time, page, seconds, how it ended) to that file. Fragment polls do not run the app script and
are not logged. Off (and free) unless the variable is set; benchmarks/load.py reads the file."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


@contextlib.contextmanager
def timed_run(page: str) -> Iterator[None]:
    path = os.environ.get("MTL_TIMING_LOG")
    if not path:
        yield
        return
    t0 = time.perf_counter()
    ended = "done"
    try:
        yield
    except BaseException as exc:  # st.rerun and st.stop end a run by raising: still a finished run
        ended = type(exc).__name__
        raise
    finally:
        seconds = time.perf_counter() - t0
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.3f}\t{page}\t{seconds:.4f}\t{ended}\n")
