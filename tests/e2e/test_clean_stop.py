"""`autoglm launch` on the default pipeline: each stage's line says where its compute runs, and
Ctrl-C (with Triton imported by the model stages) stops the pipeline cleanly and says so, with
nothing else on the terminal."""
from __future__ import annotations

import re
import signal
import uuid

import httpx
import torch

from .conftest import READY_TIMEOUT_S, LaunchedPipeline, free_port


def test_launch_lines_say_the_device_and_ctrl_c_stops_quietly():
    p = LaunchedPipeline(f"e2e-stop-{uuid.uuid4().hex[:8]}", free_port())
    try:
        p.wait_for("all 4 stages ready", READY_TIMEOUT_S)
        p.wait_healthy()
        # The device the stage found, not the spec's wish (the default spec asks for cuda).
        found = "cuda" if torch.cuda.is_available() else "cpu"
        for stage in ("vision", "audio", "decision"):
            line = next(l for l in p.lines if re.match(rf"\[launch\] {stage} +pid", l))
            assert re.search(rf"  device {found}\S*  ready in", line), line
        r = httpx.post(p.url + "/v1/chat/completions", timeout=120, json={
            "model": "autoglm-phone-9b", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200, r.text
        before = len(p.lines)
        p.proc.send_signal(signal.SIGINT)
        assert p.proc.wait(60) == 0
        p.wait_for("stopped", 10, start=before)
        after = "\n".join(p.lines[before:])
        # Earlier every stage that had imported Triton printed ~30 lines of nanobind's
        # "leaked instances" report at interpreter exit.
        for noise in ("nanobind", "leaked", "Traceback", "Exception in thread"):
            assert noise not in after, after
    finally:
        p.stop()
