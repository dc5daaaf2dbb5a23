"""One process of a three-process toy pipeline that leaves trace spans with known delays,
through the real control plane (real DDS, real processes). Roles hand each request on with
StageEvents: gateway -> vision -> decision -> gateway.

    python tests/profiler/span_actor.py ROLE INSTANCE N_REQUESTS

Injected delays (ms) are in DELAYS; the test checks the profiler finds them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DELAYS = {"gateway.receive": 5, "gateway.media_decode": 10, "gateway.shm_write": 2,
          "vision.encode": 30, "decision.admission": 1, "decision.prefill": 40,
          "decision.token": 10, "gateway.response_sent": 3}
TOKENS = 4
ROLES = ("gateway", "vision", "decision")


def main(role: str, instance: str, n: int) -> int:
    from control import topics as t
    from control.messages import StageEvent
    from control.plane import ControlPlane
    from profiler.emit import SpanEmitter

    plane = ControlPlane(instance, role)
    tracer = SpanEmitter(plane)
    w_ev = plane.writer(t.STAGE_EVENT)
    r_ev = plane.reader(t.STAGE_EVENT)
    # The profiler must be listening before the first span (the trace topic is volatile).
    if not tracer._writer.wait_for_readers(1, timeout=90):
        print(f"{role}: no profiler attached", file=sys.stderr)
        return 2

    def timed(name: str, rid: str, **attrs) -> None:
        with tracer.span(name, rid, **attrs):
            time.sleep(DELAYS[name] / 1e3)

    def send(detail: str, rid: str = "") -> None:
        w_ev.write(StageEvent(request_id=rid, kind="done", detail=detail))

    def wait(detail: str):
        while True:
            for ev in r_ev.take(timeout=1.0):
                if ev.detail in (detail, "exit"):
                    return ev

    if role == "gateway":
        # Every actor (and this one) reads events before the first hand-off.
        if not w_ev.wait_for_readers(len(ROLES), timeout=90):
            return 3
        for i in range(n):
            rid = f"req-{i}"
            timed("gateway.receive", rid)
            timed("gateway.media_decode", rid)
            timed("gateway.shm_write", rid, bytes=12345)
            send("to_vision", rid)
            wait("to_gateway")
            timed("gateway.response_sent", rid)
        send("exit")
    elif role == "vision":
        while (ev := wait("to_vision")).detail != "exit":
            timed("vision.encode", ev.request_id, tokens=24)
            send("to_decision", ev.request_id)
    elif role == "decision":
        while (ev := wait("to_decision")).detail != "exit":
            rid = ev.request_id
            timed("decision.admission", rid)
            timed("decision.prefill", rid)
            tracer.mark("decision.first_token", rid)
            for k in range(TOKENS):
                timed("decision.token", rid, index=k)
            tracer.mark("decision.last_token", rid)
            send("to_gateway", rid)
    time.sleep(0.3)  # let the last best-effort samples leave before the participant goes
    plane.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
