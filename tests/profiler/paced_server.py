"""A test fixture for `autoglm bench serve`: an OpenAI-style SSE server that streams chunks at a
known pace (first token after --ttft-ms, then one every --itl-ms), on 127.0.0.1, port 0.

It prints "PORT <n>" once listening. With --instance it also leaves trace spans on that
instance's control plane, as the pipeline does: gateway.receive, decision.prefill (the wait
before the first token), one decision.token per later token, gateway.response_sent; so the
benchmark's overhead report (end-to-end minus compute) has known compute to find.

    python tests/profiler/paced_server.py --ttft-ms 200 --itl-ms 50 --tokens 6 [--no-usage]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.sse_server import chunk_event, serve_on_free_port  # noqa: E402


def build_app(ttft_s: float, itl_s: float, tokens: int, usage: bool, tracer=None):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def chunk(cid: str, delta: dict, finish=None, with_usage=False) -> bytes:
        return chunk_event(delta, finish, cid=cid, model="paced",
                           **({"usage": None} if with_usage else {}))

    async def chat(request: Request):
        t_recv = time.monotonic_ns()
        body = await request.json()
        n = min(tokens, int(body.get("max_tokens") or tokens))
        want_usage = usage and bool((body.get("stream_options") or {}).get("include_usage"))
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if tracer:
            tracer.emit("gateway.receive", cid, t_recv)

        async def stream():
            # The role chunk goes out at once, as this project's gateway does: not a token.
            yield chunk(cid, {"role": "assistant", "content": ""}, with_usage=want_usage)
            t0 = time.monotonic_ns()
            await asyncio.sleep(ttft_s)
            if tracer:
                tracer.emit("decision.prefill", cid, t0)
            for i in range(n):
                if i:
                    t0 = time.monotonic_ns()
                    await asyncio.sleep(itl_s)
                    if tracer:
                        tracer.emit("decision.token", cid, t0)
                # Alternate reasoning and content: both count as output.
                delta = {"reasoning_content": f"r{i} "} if i % 2 else {"content": f"w{i} "}
                yield chunk(cid, delta, with_usage=want_usage)
            yield chunk(cid, {}, finish="length", with_usage=want_usage)
            if want_usage:
                u = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": "paced", "choices": [],
                     "usage": {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}}
                yield b"data: " + json.dumps(u).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            if tracer:
                tracer.mark("gateway.response_sent", cid)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "paced", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ttft-ms", type=float, default=200)
    ap.add_argument("--itl-ms", type=float, default=50)
    ap.add_argument("--tokens", type=int, default=6)
    ap.add_argument("--no-usage", action="store_true")
    ap.add_argument("--instance", default=None)
    a = ap.parse_args()
    tracer = None
    if a.instance:
        from control.plane import ControlPlane
        from profiler.emit import SpanEmitter

        tracer = SpanEmitter(ControlPlane(a.instance, "paced-gateway"))
    serve_on_free_port(build_app(a.ttft_ms / 1e3, a.itl_ms / 1e3, a.tokens, not a.no_usage,
                                 tracer))


if __name__ == "__main__":
    main()
