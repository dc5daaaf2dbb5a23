"""Helpers for the shm tests: independent `python -c` children and unique instance names."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One prefix per test process (xdist workers included): the leftover check only looks at ours.
PREFIX = f"tst{os.getpid()}"


def unique_name() -> str:
    return f"{PREFIX}-{uuid.uuid4().hex[:8]}"


def python_c(code: str, *args: str, stdout=subprocess.PIPE, **kw) -> subprocess.Popen:
    """Start a fully independent interpreter running `code` (dedented) from the repo root."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, **kw,
    )


# Generous: a child interpreter importing numpy can take many seconds to start on a loaded
# 2-core CI machine. Only start-up and exit waits are long; what the tests assert is not.
START_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 60.0


def wait_line(proc: subprocess.Popen, expect: str, timeout: float = START_TIMEOUT_S) -> str:
    """Read stdout lines until one starts with `expect` (the child's 'I am ready' signal).
    The deadline holds even if the child prints nothing (readline alone would block)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(expect):
            return line.strip()
    proc.kill()
    proc.wait()
    raise AssertionError(f"child did not print {expect!r} within {timeout}s; stderr: {proc.stderr.read()}")
