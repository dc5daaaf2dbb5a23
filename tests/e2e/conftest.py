"""A real pipeline for the end-to-end tests: `autoglm launch` (default spec, embedded default
model, CPU) as a subprocess, under a unique instance name and a free port, module-scoped."""
from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.greedy import BF16_TIE, reference_model, shortfalls

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedPipeline:
    """`autoglm launch [SPEC]` (default spec when none) as a subprocess, its output kept."""

    def __init__(self, instance: str, port: int, extra_args: tuple[str, ...] = (),
                 spec: str | None = None):
        self.instance, self.port = instance, port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "launch", *([spec] if spec else []),
             "--instance", instance, "--port", str(port), *extra_args], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in l for l in self.lines[start:]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"/health not 200 within {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def stage_pids(self) -> dict[str, int]:
        r = subprocess.run([sys.executable, "-m", "launch.cli", "node", "list", "--instance",
                            self.instance, "--json"], cwd=REPO, capture_output=True, text=True,
                           timeout=60, check=True)
        return {row["name"]: row["pid"] for row in json.loads(r.stdout)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def ready_pipeline(prefix: str, spec: str | None = None):
    """For a fixture: yields a launched pipeline once it serves, stops it afterwards."""
    p = LaunchedPipeline(f"{prefix}-{uuid.uuid4().hex[:8]}", free_port(), spec=spec)
    try:
        p.wait_for("all 4 stages ready", READY_TIMEOUT_S)
        p.wait_healthy()
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def pipeline():
    yield from ready_pipeline("e2e")


@pytest.fixture(scope="module")
def openai_client(pipeline):
    import openai
    return openai.OpenAI(base_url=pipeline.url + "/v1", api_key="EMPTY", timeout=120)


def png_data_url(width: int, height: int, seed: int = 0) -> str:
    from PIL import Image
    rng = np.random.default_rng(seed)
    # Smooth content (blocks), so the PNG stays small like a real screenshot.
    small = rng.integers(0, 255, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_b64(seconds: float = 1.5, rate: int = 24000, freq: float = 440.0) -> str:
    import soundfile as sf
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def image_message(url: str, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": text}]}


def audio_message(b64: str, text: str) -> dict:
    return {"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
        {"type": "text", "text": text}]}


def metrics(url: str) -> dict[str, float]:
    """`autoglm:` samples of /metrics, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            out[s.name] = s.value
    return out


# Asks the server for the ids of the tokens it generated (vLLM's return_tokens_as_token_ids):
# the openai SDK's keyword arguments, for check_greedy.
WITH_IDS = {"logprobs": True, "extra_body": {"return_tokens_as_token_ids": True}}


def ids_of(logprobs_content) -> list[int]:
    return [int(lp.token.removeprefix("token_id:")) for lp in logprobs_content]


def stages_on_cuda() -> bool:
    import torch
    return torch.cuda.is_available()     # the stages take CUDA where there is one


def check_greedy(messages, images, text: str, ids: list[int], max_tokens: int) -> None:
    """A greedy reply of the pipeline against the in-process model. Stages on the CPU run
    fp32 too: the reply must be its very text. Stages on CUDA run bf16, whose rounding flips
    near-ties: there each id the pipeline chose must be within BF16_TIE of the reference's
    best (tests/greedy.py)."""
    if not stages_on_cuda():
        assert text == reference_model().generate(messages, images, max_new_tokens=max_tokens,
                                                  temperature=0.0)
        return
    assert 1 <= len(ids) <= max_tokens
    short = shortfalls(messages, images, ids)
    print(f"greedy check: {int((short > 0).sum())} of {len(ids)} ids not the reference's "
          f"argmax, at most {float(short.max()):.4f} below its best")   # pytest -rP shows it
    assert float(short.max()) <= BF16_TIE, f"below the best logit by {short.tolist()}"
