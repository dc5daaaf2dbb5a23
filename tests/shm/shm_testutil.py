"""Helpers for the shm tests: independent `python -c` children and unique instance names."""
from __future__ import annotations

import os
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


def wait_line(proc: subprocess.Popen, expect: str, timeout: float = 20.0) -> str:
    """Read stdout lines until one starts with `expect` (the child's 'I am ready' signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(expect):
            return line.strip()
    proc.kill()
    raise AssertionError(f"child did not print {expect!r}; stderr: {proc.stderr.read()}")
