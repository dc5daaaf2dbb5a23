"""Copies between shm slots and the GPU, from pageable pages against page-locked ones
(runtime.host_pinning), as the vision stage makes them: a 1080x2400 screenshot's uint8 frame
in (7.8 MB), an image's embeddings out (3,108 tokens x 4,096 bf16, 25 MB, the real model's
size). The two kinds alternate in blocks within one run (ABAB...), so the machine's drift falls
on both alike; medians in ms, and GB/s.

    python -m benchmarks.pinned_copy [--rounds 60] [--out benchmarks/results/pinned-copy-h200.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import uuid

import torch

from runtime.host_pinning import PinnedPools
from shm import Instance

from . import write_result

FRAME = (2400, 1080, 3)            # uint8
EMBEDDINGS = (3108, 4096)          # bf16


def _time(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run(rounds: int, blocks: int = 6) -> dict:
    inst = Instance.create(f"bench-pin-{os.getpid()}-{uuid.uuid4().hex[:6]}", handle_signals=False)
    try:
        frames = inst.create_pool("frames", 8 << 20, 2)
        embeddings = inst.create_pool("embeddings", 32 << 20, 2)
        frame_ref = frames.put(torch.randint(0, 256, FRAME, dtype=torch.uint8).numpy())
        frame = frames.read_torch(frame_ref)
        out = torch.randn(EMBEDDINGS, device="cuda").to(torch.bfloat16)

        def copy_in():
            frame.to("cuda", non_blocking=True)

        def copy_out():
            loan = embeddings.acquire(1.0)
            loan.write(out)
            loan.abort()

        for fn in (copy_in, copy_out):
            _time(fn, 5)   # first calls: the context, the allocator
        samples = {(kind, locked): [] for kind in ("frame_in", "embeddings_out")
                   for locked in (False, True)}
        per_block = max(1, rounds // (blocks // 2))
        for b in range(blocks):
            locked = b % 2 == 1
            pinned = PinnedPools()
            if locked:
                for pool in (frames, embeddings):
                    problem = pinned.pin(pool)
                    if problem:
                        raise SystemExit(problem)
                assert frame.is_pinned()   # the same view: locking is by address
            samples[("frame_in", locked)] += _time(copy_in, per_block)
            samples[("embeddings_out", locked)] += _time(copy_out, per_block)
            pinned.unpin()
        frames.release(frame_ref)
    finally:
        inst.close()
    sizes = {"frame_in": FRAME[0] * FRAME[1] * FRAME[2], "embeddings_out": EMBEDDINGS[0] * EMBEDDINGS[1] * 2}
    rows = []
    for kind in sizes:
        row = {"copy": kind, "bytes": sizes[kind]}
        for locked in (False, True):
            name = "page_locked" if locked else "pageable"
            med = statistics.median(samples[(kind, locked)])
            row[f"{name}_ms_median"] = round(med, 3)
            row[f"{name}_GB_per_s"] = round(sizes[kind] / med / 1e6, 1)
            row[f"{name}_samples"] = len(samples[(kind, locked)])
        rows.append(row)
    return {"benchmark": "pinned_copy", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m benchmarks.pinned_copy", "host": platform.node(),
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.pinned_copy: needs CUDA")
    result = run(args.rounds)
    for row in result["rows"]:
        print(f"{row['copy']:15s} {row['bytes'] / 1e6:5.1f} MB  pageable {row['pageable_ms_median']:.3f} ms "
              f"({row['pageable_GB_per_s']} GB/s)  page-locked {row['page_locked_ms_median']:.3f} ms "
              f"({row['page_locked_GB_per_s']} GB/s)")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
