"""The gateway's steps for one phone screenshot as Open-AutoGLM's client sends it (1080x2400
RGBA PNG at Pillow's default compression, `bench serve`'s synthetic screen), each alone on one
core: PNG decode, the composite onto white that every RGBA image took before, the opaque
shortcut (to_rgb), and the two ways to the RGB frame the vision stage takes. The steps take
turns round after round, so the machine's drift falls on all alike; medians in ms.

    python -m benchmarks.screenshot_prep [--rounds 15] [--out benchmarks/results/screenshot-prep-cpu.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from perception.vision.processor import decode_image, rgb_array, to_rgb

from . import write_result
from .serve import synthetic_screen_png


def _composite_onto_white(image: Image.Image) -> Image.Image:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def run(rounds: int) -> dict:
    png = synthetic_screen_png(1080, 2400, 0)
    image = decode_image(png)
    steps = {
        "png_decode": lambda: decode_image(png),
        "composite_onto_white (before)": lambda: _composite_onto_white(image),
        "to_rgb (opaque shortcut)": lambda: to_rgb(image),
        "to_rgb then np.asarray": lambda: np.asarray(to_rgb(image)),
        "rgb_array": lambda: rgb_array(image),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {"benchmark": "screenshot_prep", "date": time.strftime("%Y-%m-%d"),
            "host": platform.node(), "cpus": len(os.sched_getaffinity(0)),
            "image": {"size": list(image.size), "mode": image.mode, "png_bytes": len(png)},
            "rounds": rounds,
            "median_ms": {name: round(statistics.median(v), 2) for name, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.screenshot_prep")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = run(args.rounds)
    for name, ms in result["median_ms"].items():
        print(f"{name:32s} {ms:7.2f} ms")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
