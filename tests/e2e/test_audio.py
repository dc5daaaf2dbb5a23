"""Audio through launched pipelines (embedded default model, CPU).

- transcribe mode (launch/specs/transcribe.toml, a second pipeline): the audio stage's
  transcript, seen on the DDS event topic, equals AudioPipeline(mode="transcribe") run
  in-process on the same WAV; the reply equals the in-process greedy model on the prompt with
  that transcript in place of the audio part (and the prompt token count says the text is
  there); a killed audio stage is a clear 503 and the pipeline serves again after its restart;
- embed mode (the default spec): a stereo 44.1 kHz WAV and a FLAC, with the placeholder rows
  the in-process AudioPipeline produces for them;
- in both modes, empty / non-audio / NaN-filled / over-long audio is an HTTP 400 in OpenAI's
  format naming the problem, and a normal audio request succeeds right after each;
- the audio stage's trace spans (audio.encode + audio.shm_write, audio.encode +
  audio.transcribe) reach the trace topic.
"""
from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from tests.audio.conftest import speechlike

from .conftest import REPO, ready_pipeline

MODEL = "autoglm-phone-9b"
PROMPT = "Do what I said."
MAX_SECONDS = 60.0  # the audio stage's max_seconds in both specs
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def transcribe_pipeline():
    yield from ready_pipeline("e2e-tr", str(REPO / "launch" / "specs" / "transcribe.toml"))


def _client(p):
    import openai
    return openai.OpenAI(base_url=p.url + "/v1", api_key="EMPTY", timeout=120, max_retries=0)


@pytest.fixture(params=["embed", "transcribe"])
def any_pipeline(request):
    return request.getfixturevalue("pipeline" if request.param == "embed"
                                   else "transcribe_pipeline")


# --- audio files ----------------------------------------------------------------------------
def encode(pcm: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def audio_msg(data: bytes, fmt: str = "wav", text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(),
                                                "format": fmt}},
        {"type": "text", "text": text}]}]


# --- in-process references --------------------------------------------------------------------
def _model_dir():
    from modelcore.make_checkpoint import ensure_default_checkpoint
    return ensure_default_checkpoint()


def _tokenizer():
    from modelcore.tokenizer import GlmTokenizer
    return GlmTokenizer.from_dir(_model_dir())


def _in_process(mode: str, data: bytes):
    import torch

    from perception.audio import AudioPipeline, decode_audio
    torch.set_num_threads(1)
    return AudioPipeline.from_dir(_model_dir(), mode=mode).process(*decode_audio(data))


class Observer:
    """A DDS participant on the pipeline's instance, reading stage events and trace spans."""

    def __init__(self, instance: str):
        from control import topics as t
        from control.plane import ControlPlane

        self.plane = ControlPlane(instance, f"test-audio-{os.getpid()}-{uuid.uuid4().hex[:4]}")
        self.events = self.plane.reader(t.STAGE_EVENT)
        self.spans = self.plane.reader(t.TRACE_SPAN)
        # Both topics are volatile: be matched with the stages' writers before anything is sent.
        assert self.events.wait_for_writers(4, 10) and self.spans.wait_for_writers(4, 10)

    def wait(self, reader, found, timeout: float = 30.0) -> list:
        got, deadline = [], time.monotonic() + timeout
        while not found(got):
            assert time.monotonic() < deadline, f"not seen within {timeout} s: {got}"
            msgs = reader.take(timeout=0.2)
            if reader is self.spans:  # stages bundle their spans: one message, many spans
                from profiler.spans import spans_from_message
                msgs = [sp for m in msgs for sp in spans_from_message(m)]
            got.extend(msgs)
        return got

    def close(self):
        self.plane.close()


def _span_names(spans, rid_prefix: str) -> set[str]:
    return {s.name for s in spans if s.request_id.startswith(rid_prefix)}


# --- transcribe mode ------------------------------------------------------------------------------
def test_transcribe_mode_end_to_end(transcribe_pipeline):
    from modelcore.api import AutoGLMModel, MultiModalConfig
    from modelcore.prompt import build_prompt

    wav = encode(speechlike(1.5, 16000, seed=1), 16000)
    expected = _in_process("transcribe", wav).text
    assert expected                                       # the random Whisper says something
    obs = Observer(transcribe_pipeline.instance)
    try:
        r = _client(transcribe_pipeline).chat.completions.create(
            model=MODEL, messages=audio_msg(wav), max_tokens=6, temperature=0)
        done = obs.wait(obs.events, lambda got: any(
            e.kind == "done" and e.source == "audio" and e.request_id == r.id for e in got))
        spans = obs.wait(obs.spans, lambda got: {"audio.encode", "audio.transcribe"}
                         <= _span_names(got, r.id))
    finally:
        obs.close()
    import json
    detail = json.loads(next(e.detail for e in done if e.source == "audio" and e.kind == "done"
                             and e.request_id == r.id))
    assert detail == {"clip": 0, "text": expected}        # the stage's transcript, exactly
    # The transcript took the audio part's place: the reply is the in-process greedy model's
    # on that prompt, and the prompt is as long as the text makes it.
    ref_msgs = [{"role": "user", "content": [{"type": "text", "text": expected},
                                             {"type": "text", "text": PROMPT}]}]
    ref_ids = build_prompt(_tokenizer(), ref_msgs, []).ids
    assert r.usage.prompt_tokens == len(ref_ids)
    model = AutoGLMModel.from_pretrained(None, MultiModalConfig(audio_encoder=None))
    assert r.choices[0].message.content == model.generate(ref_msgs, [], max_new_tokens=6,
                                                          temperature=0.0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    by_name = {s.name: s for s in spans if s.request_id == r.id}
    assert by_name["audio.transcribe"].start_ns <= by_name["audio.encode"].start_ns
    assert by_name["audio.encode"].end_ns <= by_name["audio.transcribe"].end_ns


def test_transcribe_mode_streaming_with_two_clips(transcribe_pipeline):
    a, b = encode(speechlike(1.0, 16000, seed=2), 16000), encode(speechlike(0.8, 16000, seed=3), 16000)
    ta, tb = _in_process("transcribe", a).text, _in_process("transcribe", b).text
    msgs = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(a).decode(), "format": "wav"}},
        {"type": "text", "text": " and "},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b).decode(), "format": "wav"}}]}]
    from modelcore.prompt import build_prompt
    ref_ids = build_prompt(_tokenizer(), [{"role": "user", "content": [
        {"type": "text", "text": ta}, {"type": "text", "text": " and "},
        {"type": "text", "text": tb}]}], []).ids
    stream = _client(transcribe_pipeline).chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert [c.usage for c in chunks if c.usage][-1].prompt_tokens == len(ref_ids)


def test_killed_audio_stage_is_a_clear_503_and_the_pipeline_serves_again(transcribe_pipeline):
    import openai

    p = transcribe_pipeline
    pid = p.stage_pids()["audio"]
    mark = len(p.lines)
    # Two 30 s windows of Whisper decoding: long enough to be killed in the middle of.
    wav = encode(speechlike(59.0, 16000, seed=4), 16000, subtype="PCM_16")
    result = {}

    def request():
        try:
            _client(p).chat.completions.create(model=MODEL, messages=audio_msg(wav),
                                               max_tokens=3, temperature=0)
            result["error"] = None
        except openai.APIError as e:
            result["error"] = e

    t = threading.Thread(target=request)
    t.start()
    # Killed once it holds the request (on its in-flight board).
    from shm.inflight import read_board
    deadline = time.monotonic() + 60
    while not read_board(p.instance, "audio"):
        assert time.monotonic() < deadline, "the audio stage never took the request"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert not t.is_alive()
    err = result["error"]
    assert isinstance(err, openai.APIStatusError) and err.status_code == 503, err
    assert "audio" in str(err) and "died" in str(err)
    p.wait_for("[launch] audio", 90, start=mark)        # restarted
    deadline = time.monotonic() + 90
    while True:
        try:
            r = _client(p).chat.completions.create(
                model=MODEL, messages=audio_msg(encode(speechlike(0.5, 16000), 16000)),
                max_tokens=2, temperature=0, timeout=60)
            break
        except openai.APIError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert r.choices[0].finish_reason == "length"
    assert p.stage_pids()["audio"] != pid


# --- embed mode -----------------------------------------------------------------------------
def _embed_prompt_tokens(rows: int) -> int:
    from modelcore.prompt import build_prompt
    from runtime.compute import audio_placeholder

    tok = _tokenizer()
    begin, token, end = audio_placeholder(tok)
    ids = build_prompt(tok, [{"role": "user", "content": [
        {"type": "text", "text": begin + token + end}, {"type": "text", "text": PROMPT}]}], []).ids
    return len(ids) - 1 + rows


@pytest.mark.parametrize("kind", ["stereo-44k-wav", "flac"])
def test_embed_mode_stereo_44k_wav_and_flac(pipeline, kind):
    if kind == "flac":
        data, fmt = encode(speechlike(1.7, 22050, seed=5), 22050, "FLAC"), "flac"
    else:
        left, right = speechlike(2.0, 44100, seed=6), speechlike(2.0, 44100, seed=7)
        data, fmt = encode(np.stack([left, right], axis=1), 44100), "wav"
    rows = _in_process("embed", data).n_tokens
    assert rows > 0
    obs = Observer(pipeline.instance)
    try:
        r = _client(pipeline).chat.completions.create(
            model=MODEL, messages=audio_msg(data, fmt), max_tokens=3, temperature=0)
        spans = obs.wait(obs.spans, lambda got: {"audio.encode", "audio.shm_write"}
                         <= _span_names(got, r.id))
    finally:
        obs.close()
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens == _embed_prompt_tokens(rows)
    enc = next(s for s in spans if s.name == "audio.encode" and s.request_id == r.id)
    assert enc.attrs["tokens"] == rows


# --- bad audio, both modes -----------------------------------------------------------------------
def _bad_audio_cases():
    rate = 16000
    silence_frames = encode(np.zeros((0,), np.float32), rate)           # a WAV of 0 samples
    nan_wav = encode(np.full(rate // 2, np.nan, np.float32), rate, subtype="FLOAT")
    # Over the 60 s limit; 8 kHz int16 keeps the body small (the header gives the length).
    long_wav = encode(np.zeros(int(8000 * (MAX_SECONDS + 1)), np.int16), 8000, subtype="PCM_16")
    return [
        ("empty", silence_frames, "empty"),
        ("not-audio", b"this is plainly not a sound file, just some text " * 4, "could not decode"),
        ("nan", nan_wav, "non-finite"),
        ("too-long", long_wav, "the limit is 60 s"),
    ]


@pytest.mark.parametrize("case", _bad_audio_cases(), ids=lambda c: c[0])
def test_bad_audio_is_a_400_and_the_next_request_succeeds(any_pipeline, case):
    name, data, needle = case
    body = {"model": MODEL, "messages": audio_msg(data), "max_tokens": 2}
    r = httpx.post(any_pipeline.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_audio"
    assert err["param"] == "messages[0].content[0].input_audio"
    assert needle in err["message"], err["message"]
    ok = _client(any_pipeline).chat.completions.create(
        model=MODEL, messages=audio_msg(encode(speechlike(0.6, 16000), 16000)), max_tokens=2,
        temperature=0)
    assert ok.choices[0].finish_reason == "length"


def test_empty_base64_is_a_400_too(any_pipeline):
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}
    r = httpx.post(any_pipeline.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "input_audio.data" in r.json()["error"]["message"]
