"""Helpers that launch real pipelines (real processes, real /dev/shm, real DDS) through the
real CLI, each under a unique instance name so tests can run side by side (pytest-xdist)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90  # 2 loaded cores: several interpreters import numpy/cyclonedds at once

SMALL_SPEC = """
[http]
port = 0

[supervisor]
heartbeat_s = 1.0
dead_after_s = 3.0
restart_backoff_s = 0.2
crash_loop_failures = {crash_n}
crash_loop_window_s = 60.0

[channels.frames]
kind = "pool"
slots = 4
slot_bytes = 65536

[channels.pcm]
kind = "pool"
slots = 4
slot_bytes = 65536

[channels.embeddings]
kind = "pool"
slots = 8
slot_bytes = 65536

[channels.tokens]
kind = "ring"
slots = 256
record = "token"
"""

STAGES = {
    "gateway": ('execution.stage', '["tokens"]', '["frames", "pcm"]', ""),
    "vision": ("perception.vision.stage", '["frames"]', '["embeddings"]',
               "params = { patch = 14, hidden = 16, seed = 0 }"),
    "audio": ("perception.audio.stage", '["pcm"]', '["embeddings"]',
              "params = { window = 400, hidden = 16, seed = 1 }"),
    "decision": ("decision.stage", '["embeddings"]', '["tokens"]', "params = { max_tokens = 6 }"),
}


# The real HTTP gateway (params.compute = "model", the embedded default model's files) alone:
# it starts in about a second, and nothing else of the model is loaded.
GATEWAY_SPEC = """
[http]
port = 0

[supervisor]
restart_backoff_s = 0.2

[channels.frames]
kind = "pool"
slots = 2
slot_bytes = 65536

[channels.pcm]
kind = "pool"
slots = 2
slot_bytes = 65536

[channels.prompts]
kind = "pool"
slots = 4
slot_bytes = 65536

[channels.tokens]
kind = "ring"
slots = 256
record = "token"

[channels.engine_stats]
kind = "ring"
slots = 16
record = "engine_stats"

[stages.gateway]
module = "execution.stage"
inputs = ["tokens", "engine_stats"]
outputs = ["frames", "pcm", "prompts"]
params = { compute = "model", max_model_len = 4096 }
"""


def spec_text(stages: dict, crash_n: int = 5) -> str:
    out = SMALL_SPEC.format(crash_n=crash_n)
    for name, (module, ins, outs, extra) in stages.items():
        out += (f'\n[stages.{name}]\nmodule = "{module}"\ncores = "auto"\n'
                f"inputs = {ins}\noutputs = {outs}\n{extra}\n")
    return out


def unique_instance(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli(*args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `autoglm` command line as a subprocess."""
    r = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, text=True,
                       capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"autoglm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


class Pipeline:
    """A `autoglm launch` subprocess and its output, read line by line."""

    def __init__(self, spec_path: Path, instance: str, stages: list[str], extra_args=()):
        self.instance = instance
        self.stages = stages
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "launch", str(spec_path), "--instance", instance,
             *extra_args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for_line(self, needle: str, timeout: float, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no line containing {needle!r} within {timeout} s; "
                                         f"output:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        self.wait_for_line(f"all {len(self.stages)} stages ready", timeout)

    def stage_pids(self) -> dict[str, int]:
        rows = json.loads(cli("node", "list", "--instance", self.instance, "--json").stdout)
        return {r["name"]: r["pid"] for r in rows}

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    @property
    def shm_dir(self) -> str:
        return f"/dev/shm/autoglm-{self.instance}"


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def launch_pipeline(tmp_dir: Path, prefix: str, stages: dict, crash_n: int = 5) -> Pipeline:
    spec = tmp_dir / f"{prefix}.toml"
    spec.write_text(spec_text(stages, crash_n))
    return Pipeline(spec, unique_instance(prefix), list(stages))



def instance_processes(instance: str) -> list[int]:
    """Live processes started for `instance` (their command line names it)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "runtime.run_stage" in cmd and instance in cmd and \
                proc.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(proc.info["pid"])
    return out
