"""Run the gateway app under a real uvicorn server on an ephemeral port, in a thread."""
from __future__ import annotations

import contextlib
import threading
import time

import uvicorn

from execution.app import build_app
from execution.config import GatewayConfig, PrepareConfig
from execution.prepare import RequestPreparer


@contextlib.contextmanager
def running_gateway(tok, client, *, image_processor=None, prepare: PrepareConfig | None = None,
                    frame_at_own_size=None, **config):
    cfg = GatewayConfig(prepare=prepare or PrepareConfig(max_model_len=2048), **config)
    app = build_app(cfg, client, RequestPreparer(tok, image_processor, cfg.prepare,
                                                 frame_at_own_size=frame_at_own_size))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app.state.gateway
    finally:
        server.should_exit = True
        thread.join(10)
