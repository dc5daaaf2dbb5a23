"""Validation: every refusal has the right status, OpenAI's error shape and names the field."""
import json

import httpx
import pytest

from execution.errors import APIError
from execution.openai_schema import (AudioPart, ImagePart, SchemaLimits, TextPart,
                                     parse_chat_request, parse_json_body)

from .harness import running_gateway
from .scripted_pipeline import ScriptedPipeline

OK = {"model": "autoglm-phone-9b", "messages": [{"role": "user", "content": "hi"}]}


def body(**over):
    b = json.loads(json.dumps(OK))
    b.update(over)
    return b


def refuse(b, status=400, param=None, code=None, limits=SchemaLimits()):
    with pytest.raises(APIError) as ei:
        parse_chat_request(b, limits)
    e = ei.value
    assert e.status == status, e
    err = e.to_body()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err["message"]


def test_minimal_request_defaults():
    r = parse_chat_request(OK)
    assert r.model == "autoglm-phone-9b" and r.messages[0].content == "hi"
    assert r.temperature == 1.0 and r.max_tokens is None and not r.stream and r.top_k == 0


def test_all_parameters_parsed():
    r = parse_chat_request(body(
        temperature=0, top_p=0.85, top_k=20, max_tokens=3000, max_completion_tokens=100,
        stop="</answer>", seed=7, presence_penalty=0.5, frequency_penalty=0.2,
        repetition_penalty=1.1, logprobs=True, top_logprobs=3, stream=True,
        stream_options={"include_usage": True}, chat_template_kwargs={"enable_thinking": False},
        return_reasoning=True, max_reasoning_steps=3))
    assert (r.temperature, r.top_p, r.top_k, r.seed) == (0.0, 0.85, 20, 7)
    assert r.max_tokens == 100  # max_completion_tokens wins, as in OpenAI and vLLM
    assert r.stop == ("</answer>",) and r.logprobs and r.top_logprobs == 3
    assert r.stream and r.include_usage and r.enable_thinking is False
    assert r.return_reasoning and r.max_reasoning_steps == 3 and r.is_deterministic()


def test_logit_bias_parsed():
    r = parse_chat_request(body(logit_bias={"100": 100, "7": -2.5}))
    assert r.logit_bias == ((100, 100.0), (7, -2.5))
    assert parse_chat_request(OK).logit_bias == ()


def test_top_level_enable_thinking_wins_over_template_kwargs():
    r = parse_chat_request(body(enable_thinking=True, chat_template_kwargs={"enable_thinking": False}))
    assert r.enable_thinking is True


def test_content_parts():
    r = parse_chat_request(body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "task"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "WAV"}}]}]))
    parts = r.messages[0].content
    assert isinstance(parts[0], ImagePart) and parts[0].param == "messages[0].content[0].image_url"
    assert parts[1] == TextPart("task")
    assert isinstance(parts[2], AudioPart) and parts[2].format == "wav"
    assert r.num_images == 1


def test_bad_json():
    for raw in (b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"'):
        with pytest.raises(APIError) as ei:
            parse_json_body(raw)
        assert ei.value.status == 400 and ei.value.code == "invalid_json"


@pytest.mark.parametrize("b,param", [
    ({"model": "autoglm-phone-9b"}, "messages"),
    (body(messages="hi"), "messages"),
    (body(messages=[]), "messages"),
    (body(messages=["hi"]), "messages[0]"),
    (body(messages=[{"content": "x"}]), "messages[0].role"),
    (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    (body(messages=[{"role": "user"}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": [{"type": "video", "video": 1}]}]),
     "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
     "messages[0].content[0].text"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0].image_url"),
    (body(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "midi"}}]}]),
     "messages[0].content[0].input_audio.format"),
    (body(messages=[{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]), "messages[0].content"),
    (body(model=3), "model"),
    (body(temperature="hot"), "temperature"),
    (body(temperature=2.5), "temperature"),
    (body(temperature=True), "temperature"),
    (body(top_p=0), "top_p"),
    (body(top_k=-2), "top_k"),
    (body(max_tokens=0), "max_tokens"),
    (body(max_tokens=1.5), "max_tokens"),
    (body(max_completion_tokens="10"), "max_completion_tokens"),
    (body(stop=[1]), "stop"),
    (body(stop=[""]), "stop"),
    (body(seed="x"), "seed"),
    (body(seed=2**63), "seed"),                    # past int64, as it travels
    (body(seed=-2**63 - 1), "seed"),
    (body(top_k=2**31), "top_k"),                  # past int32
    (body(top_p=1e-50), "top_p"),                  # float32 makes it 0
    (body(repetition_penalty=1e300), "repetition_penalty"),   # past float32
    (body(repetition_penalty=1e-45), "repetition_penalty"),
    (body(presence_penalty=3), "presence_penalty"),
    (body(frequency_penalty=-2.1), "frequency_penalty"),
    (body(repetition_penalty=0), "repetition_penalty"),
    (body(logprobs="yes"), "logprobs"),
    (body(top_logprobs=21, logprobs=True), "top_logprobs"),
    (body(top_logprobs=2), "top_logprobs"),
    (body(stream="true"), "stream"),
    (body(stream_options={"include_usage": True}), "stream_options"),
    (body(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage"),
    (body(stream=True, stream_options=[]), "stream_options"),
    (body(enable_thinking="yes"), "enable_thinking"),
    (body(chat_template_kwargs={"enable_thinking": "no"}), "chat_template_kwargs.enable_thinking"),
    (body(chat_template_kwargs=[]), "chat_template_kwargs"),
    (body(return_reasoning=1), "return_reasoning"),
    (body(max_reasoning_steps=0), "max_reasoning_steps"),
    (body(tools=[{"type": "function"}]), "tools"),
    (body(tool_choice="required"), "tool_choice"),
    (body(logit_bias=[[5, 1]]), "logit_bias"),
    (body(logit_bias={"x": 1}), "logit_bias"),
    (body(logit_bias={"-1": 1}), "logit_bias"),
    (body(logit_bias={"5": 100.5}), "logit_bias"),
    (body(logit_bias={"5": "1"}), "logit_bias"),
    (body(logit_bias={"5": True}), "logit_bias"),
    (body(tool_choice={"type": "function", "function": {"name": "tap"}}), "tool_choice"),
    (body(response_format={"type": "json_object"}), "response_format"),
])
def test_refusals_name_the_field(b, param):
    msg = refuse(b, param=param)
    assert msg  # a message for the human


def test_n_other_than_one_is_refused_clearly():
    msg = refuse(body(n=2), param="n", code="unsupported_n")
    assert "n=1" in msg
    assert parse_chat_request(body(n=1)).model == "autoglm-phone-9b"


def test_unknown_model_is_404():
    msg = refuse(body(model="gpt-4o"), status=404, param="model", code="model_not_found")
    assert "gpt-4o" in msg


def test_missing_model_means_the_served_one():
    b = body()
    del b["model"]
    assert parse_chat_request(b).model == "autoglm-phone-9b"


def test_too_many_images():
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    b = body(messages=[{"role": "user", "content": [img] * 3}])
    assert parse_chat_request(b, SchemaLimits(max_images=3)).num_images == 3
    msg = refuse(b, code="too_many_images", limits=SchemaLimits(max_images=2))
    assert "3" in msg and "2" in msg


def test_assistant_without_content_is_accepted():
    r = parse_chat_request(body(messages=[{"role": "user", "content": "a"},
                                          {"role": "assistant", "content": None},
                                          {"role": "user", "content": "b"}]))
    assert r.messages[1].content == ""


# --- over HTTP: status codes and bodies as clients receive them ---------------------------

def test_http_error_statuses(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hello")
    with running_gateway(glm_tok, pipe, max_body_bytes=4096) as (url, _):
        with httpx.Client(base_url=url, timeout=10) as c:
            cases = [
                (c.post("/v1/chat/completions", content=b"{oops",
                        headers={"content-type": "application/json"}), 400, "invalid_json"),
                (c.post("/v1/chat/completions", json=body(model="nope")), 404, "model_not_found"),
                (c.post("/v1/chat/completions", json=body(n=3)), 400, "unsupported_n"),
                (c.post("/v1/chat/completions", json=body(messages=[{"role": "user",
                                                                   "content": "x" * 5000}])),
                 413, "request_too_large"),
                (c.post("/v1/chat/completions", json=body(max_tokens=4000)), 400,
                 "context_length_exceeded"),
            ]
            for resp, status, code in cases:
                assert resp.status_code == status, resp.text
                err = resp.json()["error"]
                assert err["code"] == code and err["message"]
                assert err["type"] == "invalid_request_error"
    assert pipe.submitted == []  # nothing reached the pipeline


def test_http_body_over_limit_without_content_length(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hello")
    with running_gateway(glm_tok, pipe, max_body_bytes=1000) as (url, _):
        def gen():
            for _ in range(20):
                yield b" " * 100
        r = httpx.post(url + "/v1/chat/completions", content=gen(), timeout=10)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_prompt_longer_than_context(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hello")
    from execution.config import PrepareConfig
    with running_gateway(glm_tok, pipe, prepare=PrepareConfig(max_model_len=64)) as (url, _):
        r = httpx.post(url + "/v1/chat/completions",
                       json=body(messages=[{"role": "user", "content": "hello world " * 50}]))
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "64 tokens" in err["message"]
