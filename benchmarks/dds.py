"""DDS control-message latency between two processes (`autoglm bench ipc --dds`).

Two entry points:

* ``measure_control_latency(n_messages=2000)``: the figure the project quotes for the
  control plane. A real ``Request`` (shm reference, sampling params, ~200 B serialized)
  goes from this process to a spawned consumer through ``control.ControlPlane`` with the
  table's QoS (reliable, keep-all). One-way latency = consumer's ``time.monotonic_ns()``
  on receipt minus the ``t_mono_ns`` the writer stamped (CLOCK_MONOTONIC is one clock for
  all processes of the machine). The consumer answers every request with a ``Cancel``
  (also over DDS) and the producer waits for it before sending the next, so no sample
  ever waits behind another; the round trip is reported as a cross-check.
* ``DdsTransport``: the same path as a transport of benchmarks.ipc's registry, moving an
  opaque payload of the benchmark's sizes in an ``octet`` array (DDS is not the data
  plane here; the row shows what it would cost if it were). Registered when this module
  is imported; list "benchmarks.dds" in benchmarks.ipc.TRANSPORT_MODULES.

Run alone: ``python -m benchmarks.dds [N]``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
import uuid

import numpy as np

CONSUMER_NODE = "bench-consumer"
PRODUCER_NODE = "bench-producer"


def _percentiles_us(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {"p50_us": round(float(np.percentile(a, 50)), 1),
            "p90_us": round(float(np.percentile(a, 90)), 1),
            "p99_us": round(float(np.percentile(a, 99)), 1),
            "max_us": round(float(a.max()), 1)}


def _consumer(instance: str, n_total: int, results) -> None:
    """Spawned: take each request, record its one-way latency, ack it with a Cancel."""
    try:
        from control import messages as m
        from control import topics as t
        from control.plane import ControlPlane

        with ControlPlane(instance, CONSUMER_NODE) as plane:
            requests = plane.reader(t.REQUEST)
            acks = plane.writer(t.CANCEL)
            if not acks.wait_for_readers(1, timeout=30):
                raise TimeoutError("producer's ack reader never matched")
            lat = []
            while len(lat) < n_total:
                got = requests.take(timeout=10.0)
                if not got:
                    raise TimeoutError(f"no request after {len(lat)} of {n_total}")
                now = time.monotonic_ns()
                for req in got:
                    lat.append(now - req.t_mono_ns)
                    acks.write(m.Cancel(request_id=req.request_id, reason="ack"))
            results.put(("ok", lat))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def measure_control_latency(n_messages: int = 2000, *, warmup: int = 200,
                            instance: str | None = None) -> dict:
    """One-way latency of a control message (Request) between two processes.

    Returns {"n", "message_bytes", "one_way": {p50_us, p90_us, p99_us, max_us},
    "round_trip": {...}, "qos", "transport"}.
    """
    if n_messages < 1 or warmup < 0:
        raise ValueError("n_messages must be >= 1 and warmup >= 0")
    from control import messages as m
    from control import topics as t
    from control.plane import ControlPlane

    instance = instance or f"bench-dds-{uuid.uuid4().hex[:8]}"
    total = warmup + n_messages
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with ControlPlane(instance, PRODUCER_NODE) as plane:
        requests = plane.writer(t.REQUEST)
        acks = plane.reader(t.CANCEL)
        proc = ctx.Process(target=_consumer, args=(instance, total, results), daemon=True)
        proc.start()
        try:
            if not requests.wait_for_readers(1, timeout=30):
                raise TimeoutError("consumer's request reader never matched")
            sample = m.Request(
                request_id="", prompt=m.ShmRef("tokens", 3, 12345, 4096), n_prompt_tokens=1024,
                modalities=[m.Modalities.IMAGE], media=[m.ShmRef("frames", 1, 77, 3 << 20)],
                sampling=m.SamplingParams(max_new_tokens=512, temperature=0.7, top_p=0.9))
            rtt = []
            for i in range(total):
                sample.request_id = f"bench-{i}"
                t0 = time.monotonic_ns()
                requests.write(sample)
                if acks.take_one(timeout=10.0) is None:
                    raise TimeoutError(f"no ack for message {i}")
                rtt.append(time.monotonic_ns() - t0)
            status, lat = results.get(timeout=30)
            if status != "ok":
                raise RuntimeError(f"consumer failed: {lat}")
        finally:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return {
        "n": n_messages,
        "message_bytes": len(sample.serialize()),
        "one_way": _percentiles_us(lat[warmup:]),
        "round_trip": _percentiles_us(rtt[warmup:]),
        "qos": t.REQUEST.profile.describe(),
        "transport": "Cyclone DDS (cyclonedds 11.0.1), loopback UDP, unicast discovery",
    }


# ---------------------------------------------------------------------------------------
# benchmarks.ipc transport (opt-in with --dds)
# ---------------------------------------------------------------------------------------
_PAYLOAD_TYPES: dict = {}


def _register_ipc_transport() -> None:
    try:
        from benchmarks import ipc
    except ImportError:  # benchmarks.ipc absent: the standalone function still works
        return
    if "dds" in ipc.TRANSPORTS:
        return

    def payload_type(size: int):
        # One fixed-size type per payload size: array<octet, N> is (de)serialized as one
        # bytes copy, while sequence<octet> builds a Python int per byte (~100x slower).
        cached = _PAYLOAD_TYPES.get(size)
        if cached is None:
            from cyclonedds.idl import make_idl_struct
            from cyclonedds.idl.types import array, int64, uint8

            cached = _PAYLOAD_TYPES[size] = make_idl_struct(
                f"Payload{size}", f"autoglm.bench.Payload{size}",
                {"seq": int64, "t0": int64, "data": array[uint8, size]})
        return cached

    def spec_of(spec: dict):
        from control.topics import STREAM, TopicSpec

        return TopicSpec(f"autoglm/bench/payload{spec['size']}", payload_type(spec["size"]),
                         STREAM, "ipc benchmark")

    class _Producer:
        def __init__(self, spec):
            from control.plane import ControlPlane

            self.plane = ControlPlane(spec["instance"], PRODUCER_NODE)
            self.w = self.plane.writer(spec_of(spec))
            self.type = payload_type(spec["size"])
            self.matched = False

        def send(self, payload, seq, t0):
            if not self.matched:
                self.matched = self.w.wait_for_readers(1, timeout=30)
            self.w._dw.write(self.type(seq=seq, t0=t0, data=payload.tobytes()))

        def close(self):
            self.plane.close()

    class _Consumer:
        def __init__(self, spec):
            from control.plane import ControlPlane

            self.plane = ControlPlane(spec["instance"], CONSUMER_NODE)
            self.r = self.plane.reader(spec_of(spec))

        def recv(self, timeout):
            msg = self.r.take_one(timeout=timeout)
            if msg is None:
                raise TimeoutError("dds: no message")
            return msg.seq, msg.t0, np.frombuffer(msg.data, dtype=np.uint8)

        def done(self):
            pass

        def close(self):
            self.plane.close()

    @ipc.register_transport
    class DdsTransport(ipc.Transport):
        key = "dds"
        label = "Cyclone DDS"
        includes = "serialize + loopback UDP + deserialize (1 copy each side)"
        opt_in_flag = "dds"

        def setup(self, size, window):
            return {"instance": f"bench-ipc-dds-{uuid.uuid4().hex[:8]}", "size": size}

        def open_producer(self, spec):
            return _Producer(spec)

        def open_consumer(self, spec):
            return _Consumer(spec)

    globals()["DdsTransport"] = DdsTransport


_register_ipc_transport()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 2000
    print(json.dumps(measure_control_latency(n), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
