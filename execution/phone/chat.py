"""One streamed chat completion against an OpenAI-compatible server, as the phone agent
sends it: the reply's whole text and how long it took (first token, whole reply).

The request carries the Open-AutoGLM client's sampling (temperature 0, top_p 0.85,
frequency_penalty 0.2, max_tokens 3000, streamed), so the agent asks this server what that
client would. The text is content plus any reasoning_content, in arrival order: a server that
splits out <think> (return_reasoning) then reads the same as one that does not.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

SAMPLING = {"temperature": 0.0, "top_p": 0.85, "frequency_penalty": 0.2, "max_tokens": 3000}


class ChatError(RuntimeError):
    """The server could not be reached or refused the request; the message says which."""


@dataclass(frozen=True)
class Reply:
    text: str
    first_token_s: float | None
    total_s: float
    finish_reason: str | None


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout_s: float = 600.0, sampling: dict | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10))
        self.sampling = {**SAMPLING, **(sampling or {})}

    def complete(self, messages: list[dict], on_text=None) -> Reply:
        """The whole reply; ``on_text(piece)`` is called with each piece as it arrives."""
        body = {"model": self.model, "messages": messages, "stream": True, **self.sampling}
        url = self.base_url + "/chat/completions"
        t0 = time.monotonic()
        first, parts, finish = None, [], None
        try:
            with self._http.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    raise ChatError(f"{url} answered {r.status_code}: {_error_message(r)}")
                for data in _sse_data(r.iter_lines()):
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ChatError(f"{url} sent an event that is not JSON: "
                                        f"{data[:200]!r}") from None
                    if "error" in chunk:     # a failure after the stream began
                        raise ChatError(f"the server failed mid-reply: "
                                        f"{chunk['error'].get('message', chunk['error'])}")
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = (delta.get("reasoning_content") or "") + (delta.get("content") or "")
                        if text:
                            if first is None:
                                first = time.monotonic() - t0
                            parts.append(text)
                            if on_text is not None:
                                on_text(text)
                        finish = choice.get("finish_reason") or finish
        except httpx.ConnectError as e:
            raise ChatError(f"cannot reach {url}: {e}") from None
        except httpx.HTTPError as e:
            raise ChatError(f"the request to {url} failed: {type(e).__name__}: {e}") from None
        return Reply("".join(parts), first, time.monotonic() - t0, finish)

    def close(self) -> None:
        self._http.close()


def _sse_data(lines):
    """The payloads of an SSE stream's data: events, up to [DONE]."""
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield data


def _error_message(response: httpx.Response) -> str:
    raw = response.read().decode(errors="replace")
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.strip()[:300] or response.reason_phrase
