import json

from execution.pipeline_client import TokenLogprob
from execution.streaming import DONE, ChunkBuilder, completion_body, logprobs_dict, usage_dict


def parse(b):
    assert b.startswith(b"data: ") and b.endswith(b"\n\n")
    return json.loads(b[6:-2])


def test_first_chunk_and_usage_null():
    cb = ChunkBuilder("chatcmpl-1", "autoglm-phone-9b", include_usage=True, created=123)
    c = parse(cb.first())
    assert c == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 123,
                 "model": "autoglm-phone-9b", "usage": None,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}]}
    u = parse(cb.usage(usage_dict(10, 5, None)))
    assert u["choices"] == [] and u["usage"] == {"prompt_tokens": 10, "completion_tokens": 5,
                                                 "total_tokens": 15, "prompt_tokens_details": None}


def test_no_usage_key_without_include_usage():
    cb = ChunkBuilder("x", "m")
    assert "usage" not in parse(cb.first())
    assert "usage" not in parse(cb.delta("a"))


def test_delta_variants():
    cb = ChunkBuilder("x", "m", return_reasoning=True)
    assert cb.delta("") is None
    assert parse(cb.delta("hi"))["choices"][0]["delta"] == {"content": "hi"}
    assert parse(cb.delta(reasoning="why"))["choices"][0]["delta"] == {
        "reasoning_content": "why", "reasoning": "why"}
    fin = parse(cb.delta(finish_reason="stop"))["choices"][0]
    assert fin["delta"] == {"content": ""} and fin["finish_reason"] == "stop"
    last = parse(cb.delta("end", finish_reason="length"))["choices"][0]
    assert last["delta"] == {"content": "end"} and last["finish_reason"] == "length"


def test_reasoning_dropped_when_not_requested():
    cb = ChunkBuilder("x", "m", return_reasoning=False)
    assert cb.delta(reasoning="secret") is None


def test_unicode_is_sent_as_is():
    cb = ChunkBuilder("x", "m")
    assert "你好".encode() in cb.delta("你好")
    assert DONE == b"data: [DONE]\n\n"


def test_completion_body_and_logprobs():
    lp = logprobs_dict([TokenLogprob(5, -0.1, ((5, -0.1), (6, float("-inf"))))],
                       lambda i: {5: "a", 6: "é"}[i], top_n=2)
    assert lp["content"][0]["top_logprobs"][1] == {"token": "é", "logprob": -9999.0,
                                                   "bytes": [195, 169]}
    b = completion_body("id", "m", "ans", "think", "stop", usage_dict(3, 4, 2), lp, created=9)
    json.dumps(b)  # valid JSON (no -inf)
    assert b["choices"][0]["message"] == {"role": "assistant", "content": "ans",
                                          "reasoning_content": "think", "reasoning": "think"}
    assert b["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert "reasoning_content" not in completion_body("id", "m", "a", None, "stop",
                                                      usage_dict(1, 1))["choices"][0]["message"]
