"""The niceness of a process's CPU group, where Linux groups processes by session (autogroup, on by default
in most distributions and on this project's machines). There CPU time is shared between the groups first,
and a process's own niceness or idle class counts only against the other processes of its group. The
job worker lowers its own group with this (mtl_core/jobs/worker.py), and benchmarks/load.py the browsers'.
No torch here: the load benchmark imports it."""

from __future__ import annotations

import errno
import time
from pathlib import Path


def set_group_nice(nice: int, pid: int | str = "self") -> None:
    """Set the niceness of `pid`'s session group; nothing where the kernel has no autogroup."""
    group = Path(f"/proc/{pid}/autogroup")
    for _ in range(20):
        try:
            group.write_text(str(nice))
            return
        except FileNotFoundError:  # a kernel without autogroup: the processes' niceness is the whole story
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                return
            time.sleep(0.11)  # the kernel allows one change of a group's niceness per 100 ms, machine-wide
