"""Fixtures that launch real pipelines through the real CLI (see launch_testkit.py)."""
from __future__ import annotations

import os

import pytest

from launch_testkit import STAGES, instance_processes, launch_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One four-stage pipeline shared by the tests of a module."""
    p = launch_pipeline(tmp_path_factory.mktemp("spec"), "tl", STAGES)
    try:
        p.wait_ready()
        p.initial_pids = p.stage_pids()
        yield p
    finally:
        p.stop()
        # Teardown itself checks the promise of a clean stop.
        assert not os.path.exists(p.shm_dir), f"{p.shm_dir} left behind"
        assert not instance_processes(p.instance), "stage processes left behind"

