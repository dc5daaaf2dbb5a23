"""Response bodies and SSE chunks in the shape vLLM's OpenAI server produces.

Streaming (``stream: true``): ``data: {json}\\n\\n`` events:
1. a first chunk whose delta is ``{"role": "assistant", "content": ""}``;
2. one chunk per non-empty text delta (``content``; with return_reasoning also
   ``reasoning_content`` and ``reasoning`` for thinking text);
3. ``finish_reason`` rides on the last content chunk (a chunk with an empty delta if no text
   came with the end);
4. with ``stream_options.include_usage``: every chunk above carries ``"usage": null`` and one
   more chunk with ``"choices": []`` and the usage follows;
5. ``data: [DONE]``.
Non-streaming: one ``chat.completion`` object with ``usage``.

Reasoning goes into both ``reasoning_content`` (vLLM / DeepSeek spelling, which LangChain and
most clients read) and ``reasoning`` (vLLM's newer spelling). Content is the model's raw text
unless return_reasoning is on (then it is the answer after ``</think>``).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .pipeline_client import TokenLogprob

DONE = b"data: [DONE]\n\n"


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def sse(payload: dict[str, Any]) -> bytes:
    # ensure_ascii=False: Chinese text stays readable and 3x smaller on the wire.
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage_dict(prompt_tokens: int, completion_tokens: int,
               cached_tokens: int | None = None) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": None if cached_tokens is None else {"cached_tokens": cached_tokens},
    }


def logprobs_dict(items: Sequence[TokenLogprob], token_text: Callable[[int], str],
                  top_n: int) -> dict[str, Any]:
    def entry(tid: int, lp: float) -> dict[str, Any]:
        text = token_text(tid)
        # -inf is not JSON; OpenAI clients expect a number. -9999 is what vLLM substitutes.
        return {"token": text, "logprob": max(float(lp), -9999.0), "bytes": list(text.encode())}
    out = []
    for it in items:
        e = entry(it.token_id, it.logprob)
        e["top_logprobs"] = [entry(t, lp) for t, lp in it.top[:top_n]]
        out.append(e)
    return {"content": out}


@dataclass
class ChunkBuilder:
    """Builds the SSE events of one streamed completion."""
    completion_id: str
    model: str
    include_usage: bool = False
    return_reasoning: bool = False
    created: int = 0

    def __post_init__(self):
        self.created = self.created or int(time.time())

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        c: dict[str, Any] = {"id": self.completion_id, "object": "chat.completion.chunk",
                             "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            c["usage"] = None
        return c

    def first(self) -> bytes:
        return sse(self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}]))

    def delta(self, content: str = "", reasoning: str = "", finish_reason: str | None = None,
              logprobs: dict[str, Any] | None = None) -> bytes | None:
        """One chunk, or None when there is nothing to say."""
        d: dict[str, Any] = {}
        if reasoning and self.return_reasoning:
            d["reasoning_content"] = reasoning
            d["reasoning"] = reasoning
        if content or (finish_reason and not d):
            d["content"] = content
        if not d and finish_reason is None and logprobs is None:
            return None
        return sse(self._chunk([{"index": 0, "delta": d, "logprobs": logprobs,
                                 "finish_reason": finish_reason}]))

    def usage(self, usage: dict[str, Any]) -> bytes:
        c = self._chunk([])
        c["usage"] = usage
        return sse(c)

    def error(self, message: str, type: str = "server_error", code: str | None = None) -> bytes:
        # vLLM reports a failure after the headers went out as one data event carrying an
        # OpenAI error object; the openai SDK raises APIError on it. Its fields are those of
        # the same failure before the headers (errors.server_error).
        return sse({"error": {"message": message, "type": type, "param": None, "code": code}})


def completion_body(completion_id: str, model: str, content: str, reasoning: str | None,
                    finish_reason: str | None, usage: dict[str, Any],
                    logprobs: dict[str, Any] | None = None,
                    created: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        # None (null) when there was none, as vLLM answers; a streamed reply says nothing.
        message["reasoning_content"] = message["reasoning"] = reasoning or None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
        "usage": usage,
    }
