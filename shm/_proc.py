"""Is a process alive? pid plus its kernel start time, so a recycled pid is not mistaken for it."""
from __future__ import annotations

import os
from functools import lru_cache


def start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat); None if gone
    or a zombie (a SIGKILLed child not yet reaped is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


@lru_cache(maxsize=1)
def _self_identity(pid: int) -> tuple[int, int]:
    return pid, start_time(pid) or 0


def self_identity() -> tuple[int, int]:
    """(pid, start time) of this process; cached per pid so it stays right after fork."""
    return _self_identity(os.getpid())


def is_alive(pid: int, start: int = 0) -> bool:
    if pid <= 0:
        return False
    st = start_time(pid)
    if st is None:
        return False
    return start == 0 or st == start
