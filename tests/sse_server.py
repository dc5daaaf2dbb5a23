"""What the test servers that stand in for an OpenAI endpoint share (tests/profiler/
paced_server.py, tests/phone/scripted_server.py): a chat.completion.chunk event, and serving
an ASGI app on a free 127.0.0.1 port that is printed as "PORT <n>" once connections queue."""
from __future__ import annotations

import json
import socket
import time


def chunk_event(delta: dict, finish=None, *, cid: str = "chatcmpl-test", model: str = "test",
                **extra) -> bytes:
    """One SSE `data:` event of a streamed chat completion (``extra``: top-level fields)."""
    c = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
         "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
         **extra}
    return b"data: " + json.dumps(c).encode() + b"\n\n"


def serve_on_free_port(app) -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue from now on, before uvicorn runs
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
