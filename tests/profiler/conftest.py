"""Fixtures of the profiler tests: a toy three-process pipeline leaving spans with known
delays, watched by the real `autoglm profile` command (a subprocess), and a paced SSE server."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
N_REQUESTS = 5


def unique_instance(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def profiled_run(tmp_path_factory):
    """Run the toy pipeline under `autoglm profile --instance ... --request req-LAST
    --record --out --json`; returns paths, the CLI's JSON and the actors' pids."""
    tmp = tmp_path_factory.mktemp("profile")
    instance = unique_instance("prof")
    record, trace = tmp / "spans.jsonl", tmp / "trace.json"
    last = f"req-{N_REQUESTS - 1}"
    prof = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "profile", "--instance", instance, "--request", last,
         "--duration", "150", "--record", str(record), "--out", str(trace), "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    actors = {role: subprocess.Popen([sys.executable, str(HERE / "span_actor.py"), role, instance,
                                      str(N_REQUESTS)], cwd=REPO, stderr=subprocess.PIPE, text=True)
              for role in ("gateway", "vision", "decision")}
    try:
        rcs = {role: p.wait(timeout=150) for role, p in actors.items()}
        out, err = prof.communicate(timeout=60)
    finally:
        for p in list(actors.values()) + [prof]:
            if p.poll() is None:
                p.kill()
    assert all(rc == 0 for rc in rcs.values()), (rcs, {r: p.stderr.read() for r, p in actors.items()})
    assert prof.returncode == 0, err
    return {"instance": instance, "record": record, "trace": trace, "cli": json.loads(out),
            "stderr": err, "pids": {role: p.pid for role, p in actors.items()}, "last": last}


@pytest.fixture()
def paced_server():
    """Start tests/profiler/paced_server.py with the given options; yields a starter."""
    procs = []

    def start(*args: str) -> str:
        p = subprocess.Popen([sys.executable, str(HERE / "paced_server.py"), *args], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("PORT "), f"paced server did not start: {line!r}"
        return f"http://127.0.0.1:{int(line.split()[1])}"

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
