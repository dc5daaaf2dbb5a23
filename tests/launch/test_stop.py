"""Ctrl-C (SIGINT) stops a pipeline as cleanly as SIGTERM: no process, no shm segment left."""
from __future__ import annotations

import os
import signal

from launch_testkit import STAGES, instance_processes, launch_pipeline


def test_ctrl_c_stops_everything(tmp_path):
    p = launch_pipeline(tmp_path, "tc", {"gateway": STAGES["gateway"],
                                          "decision": STAGES["decision"]})
    try:
        p.wait_ready()
        pids = instance_processes(p.instance)
        assert len(pids) == 2 and os.path.isdir(p.shm_dir)
        files = set(os.listdir(p.shm_dir))
        assert {"embeddings.pool", "frames.pool", "gateway.inflight", "decision.inflight"} <= files
        assert p.stop(signal.SIGINT) == 0
        p.wait_for_line("[launch] removed", 5)
        assert not os.path.exists(p.shm_dir)
        assert instance_processes(p.instance) == []
        assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)  # reaped, not zombies
    finally:
        p.stop(signal.SIGKILL)
        for pid in instance_processes(p.instance):
            os.kill(pid, signal.SIGKILL)
