"""The gateway over real HTTP (uvicorn) with a scripted pipeline behind it: SSE framing as
vLLM produces it, reasoning fields, stop strings, reasoning budget, cancellation, auth,
response cache, models/health, and the clients users run (openai SDK, LangChain)."""
import asyncio
import base64
import io
import json
import socket
import time

import httpx
import pytest

from .harness import running_gateway
from .scripted_pipeline import ScriptedPipeline

SCRIPT = "<think>The screen shows a home page.\nI need the settings app.\nIt is top left.\n</think>\n<answer>do(action=\"Tap\", element=[100, 200])</answer>"
MSG = [{"role": "user", "content": "open settings"}]


def sse_events(resp_text):
    events = [e[len("data: "):] for e in resp_text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def post(url, **body):
    body.setdefault("model", "autoglm-phone-9b")
    body.setdefault("messages", MSG)
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_non_streaming_body(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        r = post(url, temperature=0.0, top_p=0.85, frequency_penalty=0.2, max_tokens=300)
    assert r.status_code == 200
    b = r.json()
    assert b["object"] == "chat.completion" and b["model"] == "autoglm-phone-9b"
    ch = b["choices"][0]
    assert ch["message"]["content"] == SCRIPT  # raw text, tags included (vLLM, no parser)
    assert "reasoning_content" not in ch["message"]
    assert ch["finish_reason"] == "stop"
    n_out = len(glm_tok.encode(SCRIPT)) + 1  # + the stop token
    u = b["usage"]
    assert u["completion_tokens"] == n_out
    assert u["prompt_tokens"] == len(pipe.submitted[0].prompt_token_ids)
    assert u["total_tokens"] == u["prompt_tokens"] + n_out
    s = pipe.submitted[0].sampling
    assert (s.temperature, s.top_p, s.frequency_penalty, s.max_tokens) == (0.0, 0.85, 0.2, 300)
    assert s.stop_token_ids == glm_tok.eos_token_ids


def test_streaming_chunks_like_vllm(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        r = post(url, stream=True, stream_options={"include_usage": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = sse_events(r.text)
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in ev)
    assert len({e["id"] for e in ev}) == 1
    body = ev[1:-1]
    assert all(e["usage"] is None for e in ev[:-1])
    assert all(e["choices"][0]["finish_reason"] is None for e in body[:-1])
    assert body[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in body) == SCRIPT
    assert ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == len(glm_tok.encode(SCRIPT)) + 1
    assert len(body) > 10  # streamed, not one lump


def test_streaming_without_usage_has_no_usage_key(glm_tok):
    with running_gateway(glm_tok, ScriptedPipeline(glm_tok, "hi there")) as (url, _):
        ev = sse_events(post(url, stream=True).text)
    assert all("usage" not in e for e in ev)
    assert all(e["choices"] for e in ev)


def test_return_reasoning_splits_fields(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        b = post(url, return_reasoning=True, enable_thinking=True).json()
        ev = sse_events(post(url, stream=True, return_reasoning=True).text)
    msg = b["choices"][0]["message"]
    assert msg["reasoning_content"] == msg["reasoning"] == (
        "The screen shows a home page.\nI need the settings app.\nIt is top left.\n")
    assert msg["content"] == "\n<answer>do(action=\"Tap\", element=[100, 200])</answer>"
    deltas = [e["choices"][0]["delta"] for e in ev[1:]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == msg["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == msg["content"]
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)


def test_return_reasoning_with_no_reasoning_says_null(glm_tok):
    """As vLLM: a reply with no thinking has reasoning_content null (it was ""), and a streamed
    one no reasoning field in any chunk."""
    with running_gateway(glm_tok, ScriptedPipeline(glm_tok, "plain answer")) as (url, _):
        b = post(url, return_reasoning=True).json()
        ev = sse_events(post(url, stream=True, return_reasoning=True).text)
    msg = b["choices"][0]["message"]
    assert msg["content"] == "plain answer"
    assert "reasoning_content" in msg and msg["reasoning_content"] is None
    assert msg["reasoning"] is None
    assert not any("reasoning_content" in e["choices"][0]["delta"] for e in ev if e["choices"])


def test_enable_thinking_false_reaches_the_template(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "plain answer")
    with running_gateway(glm_tok, pipe) as (url, _):
        post(url, chat_template_kwargs={"enable_thinking": False})
        post(url)
    off, default = (glm_tok.decode(r.prompt_token_ids) for r in pipe.submitted)
    assert off.endswith("<|assistant|>\n<think></think>\n")
    assert default.endswith("<|assistant|>\n")


def test_stop_string_finishes_and_cancels(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        b = post(url, stop=["</think>"]).json()
        ev = sse_events(post(url, stop="settings", stream=True).text)
    assert b["choices"][0]["message"]["content"] == SCRIPT[:SCRIPT.index("</think>")]
    assert b["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in ev[1:]) == \
        SCRIPT[:SCRIPT.index("settings")]
    assert [r.request_id for r in pipe.submitted] == pipe.cancelled


def test_a_generation_closed_unread_cancels_its_submitted_request(glm_tok):
    """Generation submits when made (the pipeline starts before the response does); closed
    without a read (the client left before the response started), it still cancels."""
    from execution.generation import Generation, GenerationTotals, OutputOptions
    from execution.pipeline_client import PreparedRequest, SamplingParams

    async def main():
        pipe = ScriptedPipeline(glm_tok, SCRIPT)
        gen = Generation(pipe, PreparedRequest("g1", (1, 2), SamplingParams()),
                         glm_tok.decode, OutputOptions(), GenerationTotals())
        assert [r.request_id for r in pipe.submitted] == ["g1"] and pipe.cancelled == []
        await gen.aclose()
        await gen.aclose()                      # once only
        return pipe
    assert asyncio.run(main()).cancelled == ["g1"]


def test_max_tokens_gives_length(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        b = post(url, max_tokens=5).json()
    assert b["choices"][0]["finish_reason"] == "length"
    assert b["usage"]["completion_tokens"] == 5
    assert b["choices"][0]["message"]["content"] == glm_tok.decode(glm_tok.encode(SCRIPT)[:5])


@pytest.mark.parametrize("inject", [False, True])
def test_max_reasoning_steps_closes_thinking(glm_tok, inject):
    pipe = ScriptedPipeline(glm_tok, SCRIPT, after_close="\n<answer>finish(message=\"ok\")</answer>",
                            supports_injection=inject)
    with running_gateway(glm_tok, pipe) as (url, _):
        b = post(url, max_reasoning_steps=1, return_reasoning=True).json()
        raw = post(url, max_reasoning_steps=1).json()
    msg = b["choices"][0]["message"]
    assert msg["reasoning_content"] == "The screen shows a home page.\n"
    assert msg["content"] == "\n<answer>finish(message=\"ok\")</answer>"
    assert raw["choices"][0]["message"]["content"] == (
        "<think>The screen shows a home page.\n</think>\n<answer>finish(message=\"ok\")</answer>")
    close = tuple(glm_tok.encode("</think>"))
    if inject:
        assert len(pipe.submitted) == 2 and [c for _, c in pipe.injected] == [close, close]
    else:
        # stop + continuation: the second prompt = first prompt + generated + "</think>"
        first, cont = pipe.submitted[0], pipe.submitted[1]
        gen = tuple(glm_tok.encode("<think>The screen shows a home page.\n"))
        assert cont.prompt_token_ids == first.prompt_token_ids + gen + close
        assert cont.sampling.max_tokens == first.sampling.max_tokens - len(gen) - len(close)
        assert first.request_id in pipe.cancelled
    # usage counts every id in the visible text (+ stop token)
    n = len(glm_tok.encode(raw["choices"][0]["message"]["content"])) + 1
    assert raw["usage"]["completion_tokens"] == n


def test_logprobs(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hello world")
    with running_gateway(glm_tok, pipe) as (url, _):
        b = post(url, logprobs=True, top_logprobs=2).json()
        ev = sse_events(post(url, logprobs=True, stream=True).text)
    lp = b["choices"][0]["logprobs"]["content"]
    ids = glm_tok.encode("hello world")
    assert [e["token"] for e in lp[:len(ids)]] == [glm_tok.decode([i]) for i in ids]
    assert all(e["logprob"] == -0.25 and len(e["top_logprobs"]) == 2 for e in lp)
    assert lp[0]["bytes"] == list(lp[0]["token"].encode())
    assert sum(len(e["choices"][0]["logprobs"]["content"]) for e in ev[1:]
               if e["choices"][0]["logprobs"]) == len(ids) + 1


def test_stream_headers_come_before_the_first_token(glm_tok):
    """The response starts while the pipeline still works on the request: a client sets up
    its response on the headers, off the first token's way."""
    pipe = ScriptedPipeline(glm_tok, "hello world", delay=0.5)     # each token 0.5 s apart
    with running_gateway(glm_tok, pipe) as (url, _):
        body = {"model": "autoglm-phone-9b", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        t0 = time.monotonic()
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            t_headers = time.monotonic() - t0
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            first = next(l for l in lines if l.startswith("data:"))
            t_first = time.monotonic() - t0
    assert t_headers < 0.4 <= t_first      # the first token takes 0.5 s; the headers do not
    assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"


def test_return_tokens_as_token_ids(glm_tok):
    """vLLM's extension: logprobs name every token, alternatives too, as "token_id:N"."""
    pipe = ScriptedPipeline(glm_tok, "hello world")
    with running_gateway(glm_tok, pipe) as (url, _):
        b = post(url, logprobs=True, top_logprobs=2, return_tokens_as_token_ids=True).json()
        ev = sse_events(post(url, logprobs=True, stream=True,
                             return_tokens_as_token_ids=True).text)
        refused = post(url, logprobs=True, return_tokens_as_token_ids="yes")
    ids = glm_tok.encode("hello world")
    lp = b["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in lp[:len(ids)]] == [f"token_id:{i}" for i in ids]
    assert all(t["token"].startswith("token_id:") for e in lp for t in e["top_logprobs"])
    streamed = [e["token"] for c in ev[1:] if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]
    assert streamed[:len(ids)] == [f"token_id:{i}" for i in ids]
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "return_tokens_as_token_ids"


def test_pipeline_error_streaming_and_not(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT, fail_after=3)
    with running_gateway(glm_tok, pipe) as (url, gw) :
        r = post(url)
        ev = post(url, stream=True).text
        metrics = httpx.get(url + "/metrics").text
    assert r.status_code == 500 and "crashed" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "server_error"
    last = json.loads(ev.split("\n\n")[-3][len("data: "):])
    assert "crashed" in last["error"]["message"] and ev.endswith("data: [DONE]\n\n")
    assert {k: v for k, v in last["error"].items() if k != "message"} == \
        {k: v for k, v in r.json()["error"].items() if k != "message"}   # streamed or not
    assert 'autoglm:request_success_total{finished_reason="error",model_name="autoglm-phone-9b"} 2.0' in metrics


def _raw_stream_and_disconnect(url, body, n_chunks):
    host, port = url[len("http://"):].split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while got.count(b"data: ") < n_chunks:
        got += s.recv(65536)
    s.close()
    return got


def test_client_disconnect_cancels_streaming_request(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT * 50, delay=0.01)
    with running_gateway(glm_tok, pipe) as (url, gw):
        _raw_stream_and_disconnect(url, {"model": "autoglm-phone-9b", "messages": MSG,
                                         "stream": True}, 4)
        deadline = time.monotonic() + 5
        while not pipe.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pipe.cancelled == [pipe.submitted[0].request_id]
        m = httpx.get(url + "/metrics").text
    assert 'autoglm:request_success_total{finished_reason="abort",model_name="autoglm-phone-9b"} 1.0' in m


def test_client_disconnect_cancels_non_streaming_request(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT * 50, delay=0.01)
    with running_gateway(glm_tok, pipe) as (url, gw):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", timeout=0.3,
                       json={"model": "autoglm-phone-9b", "messages": MSG})
        deadline = time.monotonic() + 5
        while not pipe.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
    assert pipe.cancelled == [pipe.submitted[0].request_id]


def test_api_key(glm_tok):
    with running_gateway(glm_tok, ScriptedPipeline(glm_tok, "hi"), api_key="sekrit") as (url, _):
        assert post(url).status_code == 401
        bad = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer sekrit"},
                        json={"model": "autoglm-phone-9b", "messages": MSG})
        assert ok.status_code == 200
        assert httpx.get(url + "/health").status_code == 200  # probes need no key


def test_models_and_health(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hi")
    with running_gateway(glm_tok, pipe, served_model_names=("autoglm-phone-9b", "glm4v")) as (url, _):
        models = httpx.get(url + "/v1/models").json()
        h = httpx.get(url + "/health")
        assert post(url, model="glm4v").status_code == 200
    assert [m["id"] for m in models["data"]] == ["autoglm-phone-9b", "glm4v"]
    assert models["data"][0]["max_model_len"] == 2048
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert pipe.started and pipe.closed


def test_one_model_unknown_routes_and_methods_answer_in_openai_format(glm_tok):
    import openai

    pipe = ScriptedPipeline(glm_tok, "hi")
    with running_gateway(glm_tok, pipe) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0)
        card = client.models.retrieve("autoglm-phone-9b")
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.models.retrieve("gpt-4o")
        route = httpx.post(url + "/v1/completions", json={"prompt": "hi"})
        method = httpx.get(url + "/v1/chat/completions")
    assert card.id == "autoglm-phone-9b" and card.owned_by == "autoglm-pipeline"
    assert route.status_code == 404
    assert route.json()["error"]["message"].startswith("Invalid URL (POST /v1/completions)")
    assert method.status_code == 405 and method.headers["allow"] == "POST"
    assert method.json()["error"]["message"] == "GET is not allowed on /v1/chat/completions."


def test_developer_messages_are_system_messages(glm_tok):
    pipe = ScriptedPipeline(glm_tok, "hi")
    with running_gateway(glm_tok, pipe) as (url, _):
        for role in ("developer", "system"):
            r = post(url, messages=[{"role": role, "content": "Be brief."}, *MSG])
            assert r.status_code == 200, r.text
    assert pipe.submitted[0].prompt_token_ids == pipe.submitted[1].prompt_token_ids


def test_response_cache(glm_tok):
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe, response_cache_size=4) as (url, _):
        a = post(url, temperature=0).json()
        b = post(url, temperature=0).json()
        s = sse_events(post(url, temperature=0, stream=True).text)
        post(url, temperature=0.7)  # sampled: never cached
        post(url, temperature=0.7)
        m = httpx.get(url + "/metrics").text
    assert len(pipe.submitted) == 3
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in s[1:]) == SCRIPT
    assert 'autoglm:response_cache_hits_total{model_name="autoglm-phone-9b"} 2.0' in m
    assert 'autoglm:response_cache_misses_total{model_name="autoglm-phone-9b"} 1.0' in m


def _png_data_url(w, h):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_images_expand_to_their_token_count(glm_tok, tmp_path):
    from perception.vision.processor import ImageProcessor
    proc = ImageProcessor(max_pixels=28 * 28 * 64)
    pipe = ScriptedPipeline(glm_tok, "do(action=\"Back\")")
    inside = tmp_path / "shot.png"
    inside.write_bytes(base64.b64decode(_png_data_url(100, 200).split(",")[1]))
    from execution.config import PrepareConfig
    with running_gateway(glm_tok, pipe, image_processor=proc, max_images=2,
                         prepare=PrepareConfig(max_model_len=4096, allowed_media_dir=tmp_path)) as (url, _):
        content = [{"type": "image_url", "image_url": {"url": _png_data_url(1080, 2400)}},
                   {"type": "image_url", "image_url": {"url": f"file://{inside}"}},
                   {"type": "text", "text": "task"}]
        r = post(url, messages=[{"role": "user", "content": content}])
        assert r.status_code == 200, r.text
        too_many = post(url, messages=[{"role": "user", "content": content[:1] * 3}])
        outside = post(url, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}]}])
        remote = post(url, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
        garbage = post(url, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}])
        png = _png_data_url(56, 56).split(",", 1)[1]
        not_image = post(url, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:text/plain;base64,{png}"}}]}])
    req = pipe.submitted[0]
    image_id = glm_tok.special["<|image|>"]
    n1, n2 = proc.num_image_tokens(1080, 2400), proc.num_image_tokens(100, 200)
    assert sum(1 for t in req.prompt_token_ids if t == image_id) == n1 + n2
    assert [im.num_tokens for im in req.images] == [n1, n2]
    f = req.images[0].frame
    assert f.dtype.name == "uint8" and f.shape[2] == 3
    assert req.images[0].grid_thw == (1, f.shape[0] // 14, f.shape[1] // 14)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_images"
    assert outside.status_code == 400 and outside.json()["error"]["code"] == "local_file_not_allowed"
    assert remote.status_code == 400 and remote.json()["error"]["code"] == "remote_url_not_allowed"
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert not_image.status_code == 400 and "'text/plain'" in not_image.json()["error"]["message"]
    assert len(pipe.submitted) == 1


@pytest.mark.parametrize("own_size", [True, False])
def test_an_image_goes_at_its_own_size_when_the_vision_stage_resizes_frames(glm_tok, own_size):
    """Asked per image (by its bytes): yes when a stage downstream resizes frames on its GPU
    and the image fits a frames slot; else the gateway resizes it."""
    from execution.config import PrepareConfig
    from perception.vision.processor import ImageProcessor

    proc = ImageProcessor(max_pixels=5_000_000)
    pipe = ScriptedPipeline(glm_tok, "ok")
    asked = []

    def frame_at_own_size(nbytes):
        asked.append(nbytes)
        return own_size

    with running_gateway(glm_tok, pipe, image_processor=proc,
                         prepare=PrepareConfig(max_model_len=8192),
                         frame_at_own_size=frame_at_own_size) as (url, _):
        r = post(url, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _png_data_url(1080, 2400)}}]}])
        assert r.status_code == 200, r.text
    assert asked == [1080 * 2400 * 3]
    image = pipe.submitted[0].images[0]
    h, w = proc.resized_size(1080, 2400)
    assert image.grid_thw == (1, h // 14, w // 14)            # the resized size, either way
    assert image.num_tokens == proc.num_image_tokens(1080, 2400)
    assert image.frame.shape == ((2400, 1080, 3) if own_size else (h, w, 3))


def test_openai_sdk(glm_tok):
    import openai
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY")
        r = client.chat.completions.create(model="autoglm-phone-9b", messages=MSG, temperature=0.0)
        stream = client.chat.completions.create(model="autoglm-phone-9b", messages=MSG,
                                                stream=True, max_tokens=300, temperature=0.0,
                                                top_p=0.85, frequency_penalty=0.2)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other", messages=MSG)
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(model="autoglm-phone-9b", messages=MSG, n=2)
    assert r.choices[0].message.content == SCRIPT == text
    assert "n=1" in str(ei.value)


def test_langchain_with_extra_body(glm_tok):
    from langchain_openai import ChatOpenAI
    pipe = ScriptedPipeline(glm_tok, SCRIPT)
    with running_gateway(glm_tok, pipe) as (url, _):
        chat = ChatOpenAI(model="autoglm-phone-9b", temperature=0.5, base_url=url + "/v1",
                          api_key="EMPTY", streaming=True,
                          extra_body={"enable_thinking": True, "return_reasoning": True})
        resp = chat.invoke("你是谁？")
    assert resp.content == "\n<answer>do(action=\"Tap\", element=[100, 200])</answer>"
    req = pipe.submitted[0]
    assert req.sampling.temperature == 0.5
    assert "你是谁？" in glm_tok.decode(req.prompt_token_ids)


def test_a_client_gone_while_sending_its_body_leaves_no_traceback(glm_tok):
    """A phone agent timing out while it uploads a screenshot: the server logged "Exception in
    ASGI application" with a ClientDisconnect traceback for it."""
    import logging

    pipe = ScriptedPipeline(glm_tok, "ok")
    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    uvicorn_log = logging.getLogger("uvicorn.error")   # it does not propagate to the root
    with running_gateway(glm_tok, pipe) as (url, _):
        uvicorn_log.addHandler(handler)   # once the server configured its logging
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                      b'{"model": "autoglm-phone-9b", "messages": [')
            time.sleep(0.3)   # the handler is reading the body
        time.sleep(0.5)
        assert post(url).status_code == 200   # and the gateway serves on
    uvicorn_log.removeHandler(handler)
    assert not [r for r in logged if "Exception in ASGI application" in r.getMessage()]
    assert pipe.submitted == [pipe.submitted[-1]]   # only the complete request reached it
