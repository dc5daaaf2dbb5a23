"""`autoglm bench ipc`: one-way latency and throughput between two processes, per transport.

One-way latency = monotonic clock (system-wide CLOCK_MONOTONIC) read by the producer before
it writes the payload, to the consumer holding a usable array of it. The producer waits for
the consumer's ack (over a separate multiprocessing pipe, identical for every transport)
before the next message, so every sample is unqueued. Throughput sends back to back with at
most `window` unacknowledged messages (the same backpressure for every transport).

Transports are pluggable: subclass Transport, decorate it with @register_transport in a
module, and list that module in TRANSPORT_MODULES. A transport with `opt_in_flag = "dds"`
runs only when `--dds` is given (the CLI adds the flag from the registry).
"""
from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np

KiB, MiB = 1024, 1024 * 1024
DEFAULT_SIZES = [1 * KiB, 64 * KiB, 1 * MiB, 4 * MiB, 16 * MiB]
# Modules whose import registers further transports (e.g. "benchmarks.ipc_dds").
TRANSPORT_MODULES: list[str] = ["benchmarks.dds"]

TRANSPORTS: dict[str, "Transport"] = {}


def register_transport(cls):
    """Class decorator: add one instance of the transport to the registry, keyed by cls.key."""
    inst = cls()
    if inst.key in TRANSPORTS:
        raise ValueError(f"transport {inst.key!r} registered twice")
    TRANSPORTS[inst.key] = inst
    return cls


def load_transports() -> dict[str, "Transport"]:
    for mod in TRANSPORT_MODULES:
        importlib.import_module(mod)
    return TRANSPORTS


class Transport:
    """One way of moving `size` bytes from the producer process to the consumer process.

    setup() and open_producer() run in the parent (the producer); open_consumer() runs in a
    freshly spawned process with the picklable spec that setup() returned."""

    key = ""
    label = ""
    includes = ""  # what the measured time covers, e.g. "1 memcpy into shm + doorbell; view on read"
    opt_in_flag: str | None = None  # e.g. "dds": only run with --dds
    header_bytes = 16  # (seq, t0) travel with every message

    def unavailable(self) -> str | None:
        """None if usable here, else why not (the row says so)."""
        return None

    def setup(self, size: int, window: int) -> dict:
        return {}

    def open_producer(self, spec: dict):  # -> object with send(payload, seq, t0) and close()
        raise NotImplementedError

    def open_consumer(self, spec: dict):  # -> object with recv(timeout)->(seq, t0, view), done(), close()
        raise NotImplementedError

    def teardown(self, spec: dict) -> None:
        pass


# ---------------------------------------------------------------------------------------
# Built-in transports
# ---------------------------------------------------------------------------------------
REF_DTYPE = np.dtype([("slot", "<u4"), ("pad", "<u4"), ("gen", "<u8"), ("seq", "<u8"), ("t0", "<u8")])


class _ShmProducer:
    def __init__(self, spec, in_place):
        from shm import Ring, SlotPool

        self.pool = SlotPool.attach(spec["instance"], "payload", root=spec["root"])
        self.ring = Ring.attach(spec["instance"], "refs", root=spec["root"])
        self.w = self.ring.writer()
        self.in_place = in_place

    def send(self, payload, seq, t0):
        loan = self.pool.acquire(timeout=10)
        if self.in_place:
            arr = loan.array((len(payload),), np.uint8)  # the producer would compute into this
            arr[0] = arr[-1] = seq & 0xFF
        else:
            loan.write(payload)
        ref = loan.commit()
        self.w.write((ref.slot, 0, ref.generation, seq, t0))

    def close(self):
        self.w.close()
        self.ring.close()
        self.pool.close()


class _ShmConsumer:
    def __init__(self, spec):
        from shm import Ring, SlotPool

        self.pool = SlotPool.attach(spec["instance"], "payload", root=spec["root"])
        self.ring = Ring.attach(spec["instance"], "refs", root=spec["root"])
        self.r = self.ring.reader(start="oldest")
        self.ref = None

    def recv(self, timeout):
        from shm import SlotRef

        batch = self.r.read(max_n=1, timeout=timeout)
        if not len(batch.records):
            raise TimeoutError("shm: no message")
        rec = batch.records[0]
        self.ref = SlotRef("payload", int(rec["slot"]), int(rec["gen"]))
        return int(rec["seq"]), int(rec["t0"]), self.pool.read(self.ref)

    def done(self):
        self.pool.release(self.ref)

    def close(self):
        self.r.close()
        self.ring.close()
        self.pool.close()


@register_transport
class ShmTransport(Transport):
    key = "shm"
    label = "shm slot pool + ring, FIFO wake-up"
    includes = "producer: acquire slot, 1 memcpy of the payload into shm (np.copyto into the mapping), commit, ref record into a shm ring, FIFO wake-up of the blocked reader; consumer: wake, read the ref record, zero-copy read-only numpy view (no copy)"
    in_place = False

    def setup(self, size, window):
        from shm import Instance, Ring, SlotPool

        name = f"bench-{os.getpid()}-{self.key}"
        inst = Instance.create(name)
        SlotPool.create(name, "payload", size, window + 2)
        Ring.create(name, "refs", REF_DTYPE, 256)
        return {"instance": name, "root": inst.root, "_inst": inst}

    def open_producer(self, spec):
        return _ShmProducer(spec, self.in_place)

    def open_consumer(self, spec):
        return _ShmConsumer(spec)

    def teardown(self, spec):
        spec["_inst"].close()


@register_transport
class ShmInPlaceTransport(ShmTransport):
    key = "shm-inplace"
    label = "shm, payload produced in the slot"
    includes = "producer writes its output directly into a loaned slot (no payload copy: only 2 marker bytes written); ring record + FIFO wake-up; consumer zero-copy view. Handoff cost only"
    in_place = True


class _ZmqProducer:
    def __init__(self, spec):
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, spec["window"] + 1)
        self.sock.bind(spec["endpoint"])

    def send(self, payload, seq, t0):
        self.sock.send_multipart([np.array([seq, t0], dtype="<u8").tobytes(), payload], copy=False)

    def close(self):
        self.sock.close(linger=1000)
        self.ctx.term()


class _ZmqConsumer:
    def __init__(self, spec):
        import zmq

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.connect(spec["endpoint"])

    def recv(self, timeout):
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("pyzmq: no message")
        hdr, body = self.sock.recv_multipart(copy=False)
        seq, t0 = np.frombuffer(hdr.buffer, dtype="<u8")
        return int(seq), int(t0), np.frombuffer(body.buffer, dtype=np.uint8)

    def done(self):
        pass

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


@register_transport
class ZmqTransport(Transport):
    key = "pyzmq"
    label = "pyzmq PUSH/PULL ipc://"
    includes = "send_multipart(copy=False): kernel copies through a unix socket, receiver gets a zmq frame; consumer numpy view of the received frame"

    def setup(self, size, window):
        import tempfile

        path = os.path.join(tempfile.gettempdir(), f"autoglm-bench-{os.getpid()}.sock")
        return {"endpoint": "ipc://" + path, "path": path, "window": window}

    def open_producer(self, spec):
        return _ZmqProducer(spec)

    def open_consumer(self, spec):
        return _ZmqConsumer(spec)

    def teardown(self, spec):
        try:
            os.unlink(spec["path"])
        except FileNotFoundError:
            pass


class _PipeProducer:
    def __init__(self, conn):
        self.conn = conn

    def send(self, payload, seq, t0):
        self.conn.send_bytes(np.array([seq, t0], dtype="<u8").tobytes())
        self.conn.send_bytes(memoryview(payload))

    def close(self):
        self.conn.close()


class _PipeConsumer:
    def __init__(self, conn):
        self.conn = conn

    def recv(self, timeout):
        if not self.conn.poll(timeout):
            raise TimeoutError("mp pipe: no message")
        seq, t0 = np.frombuffer(self.conn.recv_bytes(), dtype="<u8")
        return int(seq), int(t0), np.frombuffer(self.conn.recv_bytes(), dtype=np.uint8)

    def done(self):
        pass

    def close(self):
        self.conn.close()


@register_transport
class PipeTransport(Transport):
    key = "mp-pipe"
    label = "multiprocessing Pipe"
    includes = "send_bytes: kernel copy through an os pipe, recv_bytes allocates and copies into a bytes object; consumer numpy view of it"

    def setup(self, size, window):
        recv_end, send_end = mp.get_context("spawn").Pipe(duplex=False)
        return {"recv": recv_end, "send": send_end}

    def open_producer(self, spec):
        return _PipeProducer(spec["send"])

    def open_consumer(self, spec):
        return _PipeConsumer(spec["recv"])


class _IoxBase:
    def __init__(self, spec):
        import ctypes

        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self.iox2 = iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        name = iox2.ServiceName.new(spec["service"])
        w = spec["window"]
        self.svc = (
            self.node.service_builder(name).publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .max_publishers(1).max_subscribers(1).subscriber_max_buffer_size(w + 1).history_size(0)
            .open_or_create()
        )
        self.event = self.node.service_builder(name).event().open_or_create()


class _IoxProducer(_IoxBase):
    def __init__(self, spec, in_place):
        super().__init__(spec)
        self.pub = self.svc.publisher_builder().initial_max_slice_len(spec["size"] + 16).max_loaned_samples(2).create()
        self.notifier = self.event.notifier_builder().create()
        self.in_place = in_place
        self.n = spec["size"] + 16

    def send(self, payload, seq, t0):
        sample = self.pub.loan_slice_uninit(self.n)
        buf = np.frombuffer(sample.payload().as_memory_view(), dtype=np.uint8)
        buf[:16] = np.frombuffer(np.array([seq, t0], dtype="<u8").tobytes(), dtype=np.uint8)
        if self.in_place:
            buf[16] = buf[-1] = seq & 0xFF
        else:
            buf[16:] = payload
        sample.assume_init().send()
        self.notifier.notify()

    def close(self):
        # iceoryx2 ports and the node are released when their last reference goes.
        self.notifier = self.pub = self.event = self.svc = self.node = None


class _IoxConsumer(_IoxBase):
    def __init__(self, spec):
        super().__init__(spec)
        self.sub = self.svc.subscriber_builder().buffer_size(spec["window"] + 1).create()
        self.listener = self.event.listener_builder().create()
        self.sample = None

    def recv(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            sample = self.sub.receive()
            if sample is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("iceoryx2: no message")
            self.listener.timed_wait(self.iox2.Duration.from_millis(max(1, int(left * 1000))))
        self.sample = sample
        buf = np.frombuffer(sample.payload().as_memory_view(), dtype=np.uint8)
        seq, t0 = buf[:16].view("<u8")
        return int(seq), int(t0), buf[16:]

    def done(self):
        self.sample.delete()
        self.sample = None

    def close(self):
        self.listener = self.sub = self.event = self.svc = self.node = None


@register_transport
class IceoryxTransport(Transport):
    key = "iceoryx2"
    label = "iceoryx2 0.10 (Python) pub/sub + event"
    includes = "loan_slice_uninit, 1 memcpy of the payload into the loaned sample, send, event notify; subscriber: listener wake, receive, zero-copy memoryview -> numpy view"
    in_place = False

    def unavailable(self):
        try:
            import iceoryx2  # noqa: F401
        except ImportError as e:
            return f"iceoryx2 not importable ({e}); install the 'bench' extra"
        return None

    def setup(self, size, window):
        return {"service": f"autoglm/bench/{os.getpid()}/{self.key}/{size}", "size": size, "window": window}

    def open_producer(self, spec):
        return _IoxProducer(spec, self.in_place)

    def open_consumer(self, spec):
        return _IoxConsumer(spec)


@register_transport
class IceoryxInPlaceTransport(IceoryxTransport):
    key = "iceoryx2-inplace"
    label = "iceoryx2, payload produced in the sample"
    includes = "producer writes directly into the loaned sample (no payload copy: header + 2 marker bytes), send, notify; subscriber zero-copy view. Handoff cost only"
    in_place = True


# ---------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    latency_iters: int = 300  # for 1 KiB; scaled down for large payloads
    warmup: int = 20
    throughput_bytes: int = 256 * MiB  # per (transport, size), at most
    throughput_max_msgs: int = 2000
    window: int = 2
    timeout_s: float = 20.0

    def iters_for(self, size: int) -> int:
        # Large payloads are slower per message: keep each cell to roughly a second or less.
        scale = min(1.0, (256 * KiB / max(size, 1)) ** 0.5)
        return min(self.latency_iters, max(50, int(self.latency_iters * scale)))

    def msgs_for(self, size: int) -> int:
        return max(20, min(self.throughput_max_msgs, self.throughput_bytes // size))


def _consumer_main(transport_key, extra_modules, spec, size, n_lat, n_tp, ack, results):
    global TRANSPORT_MODULES
    TRANSPORT_MODULES = list(extra_modules)
    load_transports()
    t = TRANSPORTS[transport_key]
    cons = t.open_consumer(spec)
    ack.send("ready")
    lat = []
    bad = 0
    try:
        for _ in range(n_lat):
            seq, t0, view = cons.recv(30.0)
            t1 = time.monotonic_ns()
            lat.append(t1 - t0)
            mark = seq & 0xFF
            if len(view) != size or view[0] != mark or view[-1] != mark:
                bad += 1
            cons.done()
            ack.send_bytes(b"k")
        t_end = 0
        for _ in range(n_tp):
            seq, t0, view = cons.recv(30.0)
            t_end = time.monotonic_ns()
            if len(view) != size:
                bad += 1
            cons.done()
            ack.send_bytes(b"k")
        results.send({"lat_ns": lat, "t_end": t_end, "bad": bad})
    except BaseException as e:  # report instead of leaving the producer hanging
        results.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        cons.close()


def run_cell(t: Transport, size: int, plan: Plan) -> dict:
    ctx = mp.get_context("spawn")
    n_lat = plan.warmup + plan.iters_for(size)
    n_tp = plan.msgs_for(size)
    spec = t.setup(size, plan.window)
    child_spec = {k: v for k, v in spec.items() if not k.startswith("_")}
    prod = None
    proc = None
    ack_here, ack_there = ctx.Pipe()
    res_here, res_there = ctx.Pipe(duplex=False)
    try:
        prod = t.open_producer(spec)
        proc = ctx.Process(
            target=_consumer_main,
            args=(t.key, TRANSPORT_MODULES, child_spec, size, n_lat, n_tp, ack_there, res_there),
            daemon=True,
        )
        proc.start()
        if not ack_here.poll(plan.timeout_s) or ack_here.recv() != "ready":
            raise TimeoutError("consumer did not start")
        payload = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)

        def wait_ack():
            if not ack_here.poll(plan.timeout_s):
                if res_here.poll():
                    raise RuntimeError(res_here.recv().get("error", "consumer failed"))
                raise TimeoutError("no ack from consumer")
            ack_here.recv_bytes()

        for seq in range(n_lat):
            payload[0] = payload[-1] = seq & 0xFF
            t0 = time.monotonic_ns()
            prod.send(payload, seq, t0)
            wait_ack()
        outstanding = 0
        t_start = time.monotonic_ns()
        for i in range(n_tp):
            if outstanding >= plan.window:
                wait_ack()
                outstanding -= 1
            seq = n_lat + i
            prod.send(payload, seq, time.monotonic_ns())
            outstanding += 1
        while outstanding:
            wait_ack()
            outstanding -= 1
        if not res_here.poll(plan.timeout_s):
            raise TimeoutError("no result from consumer")
        res = res_here.recv()
        if "error" in res:
            raise RuntimeError(res["error"])
    finally:
        if prod is not None:
            prod.close()
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        t.teardown(spec)
    lat = np.array(res["lat_ns"][plan.warmup :], dtype=np.float64) / 1e3
    elapsed = (res["t_end"] - t_start) / 1e9
    return {
        "transport": t.key, "size": size, "status": "ok" if res["bad"] == 0 else f"{res['bad']} corrupt payloads",
        "latency_n": len(lat),
        "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
        "mean_us": float(lat.mean()), "min_us": float(lat.min()),
        "throughput_msgs": n_tp, "throughput_GBps": n_tp * size / elapsed / 1e9,
        "throughput_msgs_per_s": n_tp / elapsed,
    }


def memcpy_bandwidth_GBps(n: int = 64 * MiB, reps: int = 5) -> float:
    """Single-thread np.copyto bandwidth: the ceiling for any path that copies the payload once."""
    a = np.ones(n, dtype=np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min((lambda: (lambda t: (np.copyto(b, a), time.perf_counter() - t)[1])(time.perf_counter()))() for _ in range(reps))
    return n / best / 1e9


def machine_info() -> dict:
    import psutil

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("zmq", "iceoryx2"):
        try:
            m = importlib.import_module(mod)
            versions[mod] = getattr(m, "__version__", None) or _dist_version(mod)
        except ImportError:
            versions[mod] = None
    return {
        "hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
        "logical_cpus": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)),
        "memory_GiB": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": os.getloadavg(), "versions": versions,
        "memcpy_GBps_single_thread": round(memcpy_bandwidth_GBps(), 2),
    }


def _dist_version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod)
    except PackageNotFoundError:
        return None


def evaluate_targets(rows: list[dict]) -> dict:
    def cell(key, size):
        return next((r for r in rows if r["transport"] == key and r["size"] == size and r.get("status") == "ok"), None)

    out = {}
    shm4, zmq4, iox4 = cell("shm", 4 * MiB), cell("pyzmq", 4 * MiB), cell("iceoryx2", 4 * MiB)
    if shm4 and zmq4:
        ratio = zmq4["p50_us"] / shm4["p50_us"]
        out["4MiB_p50_pyzmq_over_shm"] = {"value": round(ratio, 2), "target": ">= 10", "met": ratio >= 10}
    if shm4 and iox4:
        ratio = shm4["p50_us"] / iox4["p50_us"]
        out["4MiB_p50_shm_over_iceoryx2"] = {"value": round(ratio, 2), "target": "<= 2", "met": ratio <= 2}
    shm16 = cell("shm", 16 * MiB)
    if shm16:
        gb = shm16["throughput_GBps"]
        out["16MiB_shm_throughput_GBps"] = {"value": round(gb, 2), "target": "> 5", "met": gb > 5}
    return out


def run(keys: list[str], plan: Plan, log=print) -> dict:
    load_transports()
    rows = []
    for key in keys:
        t = TRANSPORTS[key]
        why = t.unavailable()
        if why:
            log(f"{key}: skipped: {why}")
            rows.extend({"transport": key, "size": s, "status": f"unavailable: {why}"} for s in plan.sizes)
            continue
        for size in plan.sizes:
            try:
                row = run_cell(t, size, plan)
            except Exception as e:  # one failing transport must not lose the other rows
                row = {"transport": key, "size": size, "status": f"failed: {type(e).__name__}: {e}"}
            rows.append(row)
            log(format_row(row))
    return {
        "transports": {k: {"label": TRANSPORTS[k].label, "includes": TRANSPORTS[k].includes} for k in keys},
        "rows": rows,
        "targets": evaluate_targets(rows),
    }


def fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def format_row(r: dict) -> str:
    if r.get("status") != "ok":
        return f"{r['transport']:<17} {fmt_size(r['size']):>7}  {r.get('status')}"
    return (f"{r['transport']:<17} {fmt_size(r['size']):>7}  p50 {r['p50_us']:9.1f} us  p99 {r['p99_us']:9.1f} us"
            f"  {r['throughput_GBps']:7.2f} GB/s  ({r['throughput_msgs_per_s']:.0f} msg/s)")


def format_table(result: dict) -> str:
    rows = result["rows"]
    keys = list(dict.fromkeys(r["transport"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    width = 22
    lines = ["one-way latency p50 / p99 (us)", f"{'transport':<17}" + "".join(f"{fmt_size(s):>{width}}" for s in sizes)]

    def get(k, s):
        return next((r for r in rows if r["transport"] == k and r["size"] == s), None)

    for k in keys:
        cells = []
        for s in sizes:
            r = get(k, s)
            cells.append(f"{r['p50_us']:.1f} / {r['p99_us']:.1f}" if r and r.get("status") == "ok" else (r or {}).get("status", "-")[:width - 2])
        lines.append(f"{k:<17}" + "".join(f"{c:>{width}}" for c in cells))
    lines += ["", "throughput (GB/s)", f"{'transport':<17}" + "".join(f"{fmt_size(s):>{width}}" for s in sizes)]
    for k in keys:
        cells = []
        for s in sizes:
            r = get(k, s)
            cells.append(f"{r['throughput_GBps']:.2f}" if r and r.get("status") == "ok" else "-")
        lines.append(f"{k:<17}" + "".join(f"{c:>{width}}" for c in cells))
    if result.get("targets"):
        lines += ["", "targets:"]
        for name, t in result["targets"].items():
            lines.append(f"  {name}: {t['value']} (target {t['target']}) {'MET' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def write_json(result: dict, path: str, argv: list[str], plan: Plan, machine: dict) -> None:
    doc = {
        "benchmark": "ipc",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "autoglm " + " ".join(argv),
        "argv": [sys.executable] + sys.argv,
        "machine": machine,
        "method": {
            "latency": "producer reads time.monotonic_ns() (CLOCK_MONOTONIC, system-wide) before writing the payload; "
                       "the consumer reads it again once it holds a usable numpy array of the payload; the producer "
                       "waits for an ack before the next message (unqueued samples); first `warmup` samples dropped",
            "throughput": f"messages sent back to back with at most {plan.window} unacknowledged (same for every transport); "
                          "bytes / (consumer's last receive - producer's first send)",
            "consumer_check": "consumer checks the payload length and first/last marker bytes of every latency message",
        },
        "plan": {"sizes": plan.sizes, "latency_iters_per_size": {fmt_size(s): plan.iters_for(s) for s in plan.sizes},
                 "warmup": plan.warmup, "throughput_msgs_per_size": {fmt_size(s): plan.msgs_for(s) for s in plan.sizes},
                 "window": plan.window},
        **result,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
