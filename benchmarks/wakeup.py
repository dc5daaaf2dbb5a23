"""What a sleeping core costs the code that runs right after it wakes, with and without the
PM QoS wake-up latency hold that `autoglm launch` takes (launch.cpu_latency).

    python -m benchmarks.wakeup [--rounds 300] [--out benchmarks/results/wakeup-cpu.json]

The work is a small, fixed piece of Python of the kind each pipeline hand-off runs (unpack a
msgpack map, build and convert a 40-element id list: about 2-4 us on a warm core). For each
sleep length the process, pinned to one core, sleeps and then times the work once; the
median over ``rounds`` is reported. The hold is switched off and on in alternating blocks
of the same run (ABAB...), so drift in the machine's load falls on both sides alike. The
hold needs write access to /dev/cpu_dma_latency (root); without it the run stops and says so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import msgpack
import numpy as np

SLEEPS_MS = (0.0, 0.5, 2.0, 10.0)
_EXTRA = msgpack.packb({"presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": False,
                        "top_logprobs": 0, "image_grids": [], "audio_tokens": []})


def _work() -> None:
    msgpack.unpackb(_EXTRA)
    np.asarray(list(range(40))).astype(np.int64).tolist()


def _block(sleep_s: float, n: int) -> list[int]:
    out = []
    for _ in range(n):
        if sleep_s:
            time.sleep(sleep_s)
        t0 = time.perf_counter_ns()
        _work()
        out.append(time.perf_counter_ns() - t0)
    return out


def run(rounds: int, blocks: int = 6) -> dict:
    from launch.cpu_latency import DEVICE, hold

    os.sched_setaffinity(0, [sorted(os.sched_getaffinity(0))[-1]])
    for _ in range(200):
        _work()
    per_block = max(1, rounds // (blocks // 2))
    samples = {(ms, on): [] for ms in SLEEPS_MS for on in (False, True)}
    for b in range(blocks):
        on = b % 2 == 1
        h = None
        if on:
            h, why = hold(0)
            if h is None:
                raise SystemExit(f"benchmarks.wakeup: the hold needs {DEVICE}: {why}")
        try:
            for ms in SLEEPS_MS:
                samples[(ms, on)] += _block(ms / 1e3, per_block)
        finally:
            if h is not None:
                h.close()
    rows = []
    for ms in SLEEPS_MS:
        off, on = (np.array(samples[(ms, k)]) / 1e3 for k in (False, True))
        rows.append({"sleep_ms": ms, "median_us_sleeping_cores": float(np.median(off)),
                     "p90_us_sleeping_cores": float(np.percentile(off, 90)),
                     "median_us_latency_held": float(np.median(on)),
                     "p90_us_latency_held": float(np.percentile(on, 90)),
                     "samples_each": int(len(off))})
    return {"benchmark": "wakeup", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m benchmarks.wakeup", "host": platform.node(),
            "cpus": os.cpu_count(), "kernel": platform.release(),
            "cpuidle_driver": _read("/sys/devices/system/cpu/cpuidle/current_driver"),
            "method": __doc__.split("\n\n")[1].replace("\n", " "), "rows": rows}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=300, help="samples per sleep length and side")
    ap.add_argument("--out", default="benchmarks/results/wakeup-cpu.json")
    a = ap.parse_args()
    res = run(a.rounds)
    print(f"{'sleep':>8} {'sleeping cores':>16} {'latency held':>14}   (median us of a ~3 us task)")
    for r in res["rows"]:
        print(f"{r['sleep_ms']:6.1f}ms {r['median_us_sleeping_cores']:16.1f} "
              f"{r['median_us_latency_held']:14.1f}")
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
