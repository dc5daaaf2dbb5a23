"""Fixtures for the shm tests: unique instance names in the real /dev/shm, child processes
started as independent `python -c` interpreters, and a check that nothing is left behind."""
from __future__ import annotations

import os
import subprocess

import pytest

from shm_testutil import EXIT_TIMEOUT_S, PREFIX, unique_name


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
    try:
        yield i
    finally:
        i.close()
    assert not os.path.exists(i.path)


class Children(list):
    """Child processes of one test; `owns(name)` marks an instance that a child creates, so
    teardown removes it even when the test failed before the child could (a SIGKILLed owner
    leaves its directory behind by design) and one failure does not leak into the suite."""

    def __init__(self):
        super().__init__()
        self.instances: list[str] = []

    def owns(self, name: str) -> str:
        self.instances.append(name)
        return name


@pytest.fixture
def children():
    from shm import remove_instance

    procs = Children()
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(EXIT_TIMEOUT_S)
            for f in (p.stdout, p.stderr, p.stdin):
                if f:
                    f.close()
        for name in procs.instances:  # owners are dead now: a leftover is removed, not hidden
            remove_instance(name)
