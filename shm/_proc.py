"""Is a process alive? pid plus its kernel start time, so a recycled pid is not mistaken for it."""
from __future__ import annotations

import os


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


_identity: tuple[int, int] | None = None


def _forget_identity() -> None:
    global _identity
    _identity = None


# A forked child must not keep its parent's identity; resetting at fork keeps the hot path free
# of a getpid() syscall per call (slot bookkeeping asks on every acquire/read/release).
os.register_at_fork(after_in_child=_forget_identity)


def self_identity() -> tuple[int, int]:
    """(pid, start time) of this process; recomputed after fork."""
    global _identity
    ident = _identity
    if ident is None:
        pid = os.getpid()
        ident = _identity = (pid, start_time(pid) or 0)
    return ident


def is_alive(pid: int, start: int = 0) -> bool:
    if pid <= 0:
        return False
    st = start_time(pid)
    if st is None:
        return False
    return start == 0 or st == start
