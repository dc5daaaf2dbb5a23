"""The spans of the real pipeline: `autoglm launch` (default spec, embedded default model, CPU)
serves an image request through the HTTP API while `autoglm profile --instance ... --request ID
--json` (a subprocess) watches its trace topic; every span of issue 8 must be there, in order,
from the processes that did the work."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from conftest import REPO

from tests.e2e.conftest import png_data_url, ready_pipeline

# Every span one image request must leave (issue 8), gateway to gateway.
REQUIRED = ("gateway.receive", "gateway.media_decode", "gateway.shm_write", "vision.encode",
            "vision.shm_write", "decision.admission", "decision.embed_read", "decision.prefill",
            "decision.first_token", "decision.token", "decision.last_token",
            "gateway.response_sent")
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def pipeline():
    yield from ready_pipeline("profspans")


def _profile(instance: str, request_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "profile", "--instance", instance, "--request",
         request_id, "--json", "--duration", "120"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_attached(prof: subprocess.Popen, timeout: float = 30) -> None:
    """The profiler prints 'attached to instance' once its reader exists; DDS discovery of
    the stages' trace writers takes a moment more (spans before it are not seen)."""
    line = prof.stderr.readline()
    assert "attached to instance" in line, line
    time.sleep(2.0)


def _stream(url: str, request_id: str, content) -> tuple[str, int]:
    body = {"model": "autoglm-phone-9b", "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": content}]}
    ids, tokens = set(), 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"X-Request-Id": request_id}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                ids.add(chunk["id"])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    assert ids == {request_id}  # the client's X-Request-Id is the completion id
    return request_id, tokens


def test_image_request_leaves_every_span_in_order(pipeline):
    rid = f"spans-{uuid.uuid4().hex[:8]}"
    prof = _profile(pipeline.instance, rid)
    try:
        _wait_attached(prof)
        content = [{"type": "image_url", "image_url": {"url": png_data_url(320, 640, seed=3)}},
                   {"type": "text", "text": "What is on the screen?"}]
        _, n_tokens = _stream(pipeline.url, rid, content)
        out, err = prof.communicate(timeout=150)
    finally:
        if prof.poll() is None:
            prof.kill()
    assert prof.returncode == 0, err
    doc = json.loads(out)
    rows = doc["request"]["spans"]
    assert doc["request"]["id"] == rid and rows
    names = [r["name"] for r in rows]
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, (missing, names)

    pids = pipeline.stage_pids()
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
        # Each span comes from the process of its stage (the gateway's client is a node of
        # the gateway stage's process).
        stage = r["name"].split(".")[0]
        assert r["pid"] == pids["gateway" if stage == "gateway" else stage], r

    def start(n):
        return by_name[n][0]["offset_ms"]

    def end(n):
        return max(r["offset_ms"] + r["duration_ms"] for r in by_name[n])

    # Times are offsets on one monotonic clock; allow 1 us of float rounding.
    eps = 1e-3
    required_rows = [r for r in rows if r["name"] in REQUIRED]
    assert min(required_rows, key=lambda r: r["offset_ms"])["name"] == "gateway.receive"
    assert all(end("gateway.response_sent") >= r["offset_ms"] + r["duration_ms"] - eps
               for r in required_rows)
    assert end("gateway.receive") <= start("gateway.media_decode") + eps
    assert end("gateway.media_decode") <= start("gateway.shm_write") + eps
    assert end("gateway.shm_write") <= start("vision.encode") + eps
    assert end("vision.encode") <= start("vision.shm_write") + eps
    assert end("vision.shm_write") <= start("decision.embed_read") + eps
    # Admission ends once the image's embeddings are in: after vision, at or after the read.
    assert end("vision.encode") <= end("decision.admission") + eps
    assert end("decision.embed_read") <= end("decision.admission") + eps
    assert end("decision.admission") <= start("decision.prefill") + eps
    assert end("decision.prefill") <= start("decision.first_token") + eps
    assert start("decision.first_token") <= start("decision.token") + eps
    assert end("decision.token") <= start("decision.last_token") + eps
    assert start("decision.last_token") <= start("gateway.response_sent") + eps
    # One token span per decode step after the first token, indexed 1..n-1.
    tokens = by_name["decision.token"]
    assert n_tokens >= 2
    assert [t["attrs"]["index"] for t in tokens] == list(range(1, n_tokens))
    assert by_name["decision.last_token"][0]["attrs"]["tokens"] == n_tokens
    assert by_name["vision.encode"][0]["attrs"]["tokens"] > 0
    # The overhead report covers this request, complete from receive to response.
    assert doc["overhead"]["complete_requests"] >= 1
    assert 0 < doc["overhead"]["compute"]["max_ms"] <= doc["overhead"]["e2e"]["max_ms"]


def test_text_request_needs_no_vision_and_is_admitted_at_once(pipeline):
    rid = f"text-{uuid.uuid4().hex[:8]}"
    prof = _profile(pipeline.instance, rid)
    try:
        _wait_attached(prof)
        _stream(pipeline.url, rid, "Open the settings app")
        out, err = prof.communicate(timeout=150)
    finally:
        if prof.poll() is None:
            prof.kill()
    assert prof.returncode == 0, err
    rows = json.loads(out)["request"]["spans"]
    names = {r["name"] for r in rows}
    assert not any(n.startswith("vision.") or n == "decision.embed_read" for n in names), names
    adm = next(r for r in rows if r["name"] == "decision.admission")
    assert adm["attrs"]["modalities"] == 0
    assert adm["duration_ms"] < 50  # nothing to wait for
    assert {"gateway.receive", "decision.prefill", "decision.first_token",
            "gateway.response_sent"} <= names


def test_bad_request_id_header_is_a_400(pipeline):
    r = httpx.post(pipeline.url + "/v1/chat/completions", timeout=30,
                   headers={"X-Request-Id": "no spaces allowed"},
                   json={"model": "autoglm-phone-9b", "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "X-Request-Id" in r.text


def test_a_request_id_in_flight_is_refused_and_free_again_after(pipeline):
    """Token events are found by the request's id: a second request named like one still
    running is refused (it used to take over the first one's events, which then hung)."""
    rid = f"dup-{uuid.uuid4().hex[:8]}"
    # Long enough (a second or more here) to be still running when the second one comes.
    body = {"model": "autoglm-phone-9b", "max_tokens": 200, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "first"}]}
    second = dict(body, stream=False, max_tokens=4,
                  messages=[{"role": "user", "content": "second"}])
    url = pipeline.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60, headers={"X-Request-Id": rid}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: {")               # the first one is running
        dup = httpx.post(url, json=second, timeout=60, headers={"X-Request-Id": rid})
        rest = [line for line in lines if line]
    assert dup.status_code == 400
    err = dup.json()["error"]
    assert err["param"] == "X-Request-Id" and "still in progress" in err["message"]
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    again = httpx.post(url, json=second, timeout=60, headers={"X-Request-Id": rid})
    assert again.status_code == 200 and again.json()["id"] == rid
