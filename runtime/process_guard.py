"""Make a stage process die with its launcher.

Two layers, because each alone has a hole:
* PR_SET_PDEATHSIG asks the kernel to send SIGTERM when the parent dies. It is set by the child
  after exec, so a parent that died before that moment is missed, and it fires when the parent
  *thread* that spawned us exits; hence
* a watchdog thread that polls getppid() and terminates us when we were re-parented.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies. Linux only."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    return True


def watch_parent(parent_pid: int, interval_s: float = 0.5) -> threading.Thread:
    """Start a daemon thread that sends SIGTERM to this process once `parent_pid` is no longer
    its parent (the launcher died, even by SIGKILL)."""

    def loop():
        ev = threading.Event()
        while not ev.wait(interval_s):
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                # If SIGTERM handling is wedged, do not linger as an orphan.
                if not ev.wait(5.0):
                    os._exit(1)
                return

    t = threading.Thread(target=loop, name="parent-watchdog", daemon=True)
    t.start()
    return t


def guard_against_orphaning(parent_pid: int | None) -> None:
    """Both layers; exits at once if the parent is already gone."""
    if parent_pid is None:
        return
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)
    watch_parent(parent_pid)
