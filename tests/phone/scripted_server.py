"""A test fixture for `autoglm agent`: an OpenAI-style SSE server whose replies are given in
advance, one per request, so that the agent's loop can be checked step by step. Every request
body is appended to a JSONL file, to check what the agent sent.

    python tests/phone/scripted_server.py REPLIES.json REQUESTS.jsonl

REPLIES.json: a list; a string is streamed as the reply (its first half as reasoning_content,
the rest as content, a few characters per chunk), {"status": 400, "message": "..."} is
answered as an OpenAI error, {"raw": "..."} streams those bytes as they are, and
{"text": "...", "finish": "length"} streams the text with that finish reason. Prints
"PORT <n>" once listening on 127.0.0.1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.sse_server import chunk_event, serve_on_free_port  # noqa: E402


def build_app(replies: list, requests_path: str):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    state = {"n": 0}

    def chunk(delta: dict, finish=None) -> bytes:
        return chunk_event(delta, finish, cid="chatcmpl-scripted", model="scripted")

    async def chat(request: Request):
        body = await request.json()
        with open(requests_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(body) + "\n")
        i, state["n"] = state["n"], state["n"] + 1
        reply = replies[i] if i < len(replies) else {"status": 500, "message": "no more replies"}
        if isinstance(reply, dict) and "raw" in reply:
            return StreamingResponse(iter([reply["raw"].encode()]), media_type="text/event-stream")
        finish = "stop"
        if isinstance(reply, dict) and "text" in reply:
            reply, finish = reply["text"], reply["finish"]
        elif isinstance(reply, dict):
            return JSONResponse({"error": {"message": reply["message"], "type": "invalid_request_error",
                                           "param": None, "code": None}}, status_code=reply["status"])

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            half = len(reply) // 2
            for at in range(0, len(reply), 7):
                piece = reply[at:at + 7]
                yield chunk({"reasoning_content": piece} if at < half else {"content": piece})
            yield chunk({}, finish=finish)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def main() -> None:
    replies = json.load(open(sys.argv[1], encoding="utf-8"))
    serve_on_free_port(build_app(replies, sys.argv[2]))


if __name__ == "__main__":
    main()
