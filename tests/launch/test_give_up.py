"""The launcher and a stage that does not come back: a crash-looping stage stops the whole
pipeline (it cannot serve without it) and the launcher exits 1 naming it; a gateway restarted
on `--port 0` serves on the port the launch announced."""
from __future__ import annotations

import os
import signal

import httpx

from launch_testkit import (GATEWAY_SPEC, STAGES, Pipeline, instance_processes, launch_pipeline,
                            unique_instance)


def test_a_crash_looping_stage_stops_the_pipeline(tmp_path):
    p = launch_pipeline(tmp_path, "gu", {
        "gateway": STAGES["gateway"],
        "crasher": ("tests.launch.crashing_stage", "[]", "[]", "")}, crash_n=2)
    try:
        assert p.proc.wait(60) == 1
        p.wait_for_line("[launch] removed", 0)   # the same teardown as Ctrl-C
        assert p.lines[-1] == (
            "autoglm launch: stage 'crasher' failed 2 times within 60 s (last: process exited "
            "with exit status 1) and was not restarted; last error: RuntimeError: this stage "
            "crashes on purpose")
        assert not os.path.exists(p.shm_dir)
        assert instance_processes(p.instance) == []
    finally:
        p.stop(signal.SIGKILL)
        for pid in instance_processes(p.instance):
            os.kill(pid, signal.SIGKILL)


def _api_port(p: Pipeline) -> int:
    line = p.wait_for_line("OpenAI API will be served at http://127.0.0.1:", 30)
    return int(line.split("127.0.0.1:")[1].split("/")[0])


def test_port_0_is_picked_once_and_kept_by_a_restarted_gateway(tmp_path):
    spec = tmp_path / "gateway.toml"
    spec.write_text(GATEWAY_SPEC)
    p = Pipeline(spec, unique_instance("gp"), ["gateway"], ("--port", "0"))
    try:
        port = _api_port(p)
        assert port != 0
        p.wait_ready(60)
        url = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(url, timeout=10).status_code == 200
        [pid] = instance_processes(p.instance)
        os.kill(pid, signal.SIGKILL)
        p.wait_for_line("[launch] restarting gateway (restart 1)", 10)
        p.wait_for_line("[launch] gateway    pid", 60, start=p.lines.index(
            "[launch] restarting gateway (restart 1)"))
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        p.stop()
        for pid in instance_processes(p.instance):
            os.kill(pid, signal.SIGKILL)
