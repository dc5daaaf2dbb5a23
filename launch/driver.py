"""A client of a running pipeline that plays the gateway's ingress side until the HTTP gateway
exists: it writes media into the shm pools, publishes a Request, and waits for the gateway's
`done` event (or any stage's `error`). Used by tests and for poking a live pipeline.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import numpy as np


class RequestFailed(RuntimeError):
    pass


class PipelineClient:
    def __init__(self, instance: str, *, node_name: str | None = None,
                 frames: str = "frames", pcm: str = "pcm", gateway: str = "gateway"):
        from control import topics as t
        from control.plane import ControlPlane
        from control.requests import RequestPublisher

        self.instance = instance
        self.plane = ControlPlane(instance, node_name or f"driver-{os.getpid()}")
        self.w_request = RequestPublisher(self.plane)
        self.w_cancel = self.plane.writer(t.CANCEL)
        self.w_config = self.plane.writer(t.CONFIG)
        self.r_event = self.plane.reader(t.STAGE_EVENT)
        self.frames, self.pcm, self.gateway = frames, pcm, gateway
        self._pools: dict = {}
        self.events: dict[str, list] = {}

    def _pool(self, name):
        from shm.pool import SlotPool

        if name not in self._pools:
            self._pools[name] = SlotPool.attach(self.instance, name)
        return self._pools[name]

    def wait_ready(self, n_stages: int, timeout: float = 10.0) -> bool:
        """Wait until `n_stages` request readers are matched (a volatile topic drops what is
        written before discovery)."""
        return self.w_request.wait_for_readers(n_stages, timeout)

    def submit(self, *, image: np.ndarray | None = None, audio: np.ndarray | None = None,
               max_new_tokens: int = 8, request_id: str | None = None) -> str:
        from control.messages import Request, SamplingParams
        from runtime.compute import shm_ref

        rid = request_id or uuid.uuid4().hex[:16]
        modalities, media = [], []
        if image is not None:
            ref = self._pool(self.frames).put(np.ascontiguousarray(image), readers=1, timeout=5.0)
            modalities.append("image")
            media.append(shm_ref(ref, image.nbytes))
        if audio is not None:
            ref = self._pool(self.pcm).put(np.ascontiguousarray(audio, dtype=np.float32),
                                           readers=1, timeout=5.0)
            modalities.append("audio")
            media.append(shm_ref(ref, audio.nbytes))
        self.events[rid] = []
        self.w_request.write(Request(request_id=rid, modalities=modalities, media=media,
                                     sampling=SamplingParams(max_new_tokens=max_new_tokens)))
        return rid

    def _collect(self, timeout: float) -> None:
        for ev in self.r_event.take(timeout):
            self.events.setdefault(ev.request_id, []).append(ev)

    def wait(self, rid: str, timeout: float = 10.0) -> list[int]:
        """The token ids the gateway received for `rid`; RequestFailed on an error event."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events.get(rid, []):
                if ev.kind == "error":
                    raise RequestFailed(f"request {rid} failed in {ev.source}: {ev.detail}")
                if ev.kind == "done" and ev.source == self.gateway:
                    return json.loads(ev.detail)
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = [(e.source, e.kind) for e in self.events.get(rid, [])]
                raise TimeoutError(f"request {rid}: no result within {timeout} s (events: {kinds})")
            self._collect(min(left, 0.1))

    def wait_event(self, rid: str, source: str, kind: str, timeout: float = 5.0) -> bool:
        """Whether stage `source` published event `kind` for `rid` within `timeout` s. Events
        of different stages have no order between them: a stage's "done" may come after the
        gateway's."""
        deadline = time.monotonic() + timeout
        while not any(e.source == source and e.kind == kind for e in self.events.get(rid, [])):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._collect(min(left, 0.1))
        return True

    def set_config(self, name: str, value) -> str:
        from control.messages import ConfigValue

        rid = uuid.uuid4().hex[:12]
        self.w_config.write(ConfigValue(name=name, request_id=rid, value_json=json.dumps(value)))
        return rid

    def close(self) -> None:
        for p in self._pools.values():
            p.close()
        self.plane.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
