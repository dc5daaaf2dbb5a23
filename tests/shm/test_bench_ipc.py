import json
import os
import subprocess
import sys

from shm_testutil import REPO


def test_bench_ipc_smoke(tmp_path):
    """A tiny run of `autoglm bench ipc` through the real CLI: rows, targets and JSON."""
    out = tmp_path / "ipc.json"
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run(
        [sys.executable, "-m", "launch.cli", "bench", "ipc", "--transports", "shm,mp-pipe", "--sizes", "4K,64K",
         "--iters", "20", "--warmup", "2", "--throughput-mib", "1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "one-way latency p50 / p99" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("autoglm bench ipc") and doc["machine"]["logical_cpus"] >= 1
    rows = {(x["transport"], x["size"]): x for x in doc["rows"]}
    assert set(rows) == {("shm", 4096), ("shm", 65536), ("mp-pipe", 4096), ("mp-pipe", 65536)}
    for row in rows.values():
        assert row["status"] == "ok" and 0 < row["p50_us"] <= row["p99_us"] and row["throughput_GBps"] > 0
    assert "view" in doc["transports"]["shm"]["includes"]
    bad = subprocess.run([sys.executable, "-m", "launch.cli", "bench", "ipc", "--transports", "nope"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown transport(s) nope" in bad.stderr
