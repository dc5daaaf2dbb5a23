"""Fixtures for the shm tests: unique instance names in the real /dev/shm, child processes
started as independent `python -c` interpreters, and a check that nothing is left behind."""
from __future__ import annotations

import os
import subprocess

import pytest

from shm_testutil import PREFIX, unique_name


@pytest.fixture(scope="session", autouse=True)
def no_segments_left():
    from shm import shm_root

    yield
    root = shm_root()
    left = [e for e in os.listdir(root) if e.startswith(f"autoglm-{PREFIX}")]
    for e in left:  # clean up so one failure does not pollute the machine, then fail
        subprocess.run(["rm", "-rf", os.path.join(root, e)])
    assert not left, f"segments left in {root} after the suite: {left}"


@pytest.fixture
def inst():
    from shm import Instance

    i = Instance.create(unique_name(), handle_signals=False)
    yield i
    i.close()
    assert not os.path.exists(i.path)


@pytest.fixture
def children():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
