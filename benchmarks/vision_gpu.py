"""Full-size GLM-4.1V vision tower: this project's VisionTower against transformers'.

Builds the real vision shape (depth 24, hidden 1536, 12 heads, out 4096, merger 13696) with
transformers' random initialisation, shares the very same weights with VisionTower, runs both
on a 1080x2400 phone screenshot preprocessed with max_pixels 5,000,000 (3,108 image tokens),
and reports agreement and time per image. With a low-precision dtype it also runs an fp32
copy of the reference, so each implementation's error is measured against fp32 too.

    python -m benchmarks.vision_gpu --device cuda --dtype bf16
    python -m benchmarks.vision_gpu --device cpu --dtype fp32 --depth 2   # quick CPU check
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def synthetic_screenshot(width: int = 1080, height: int = 2400, seed: int = 0) -> Image.Image:
    """Smooth background, flat bars and noisy 'text' rows: content a screen might have."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    img = (255 * np.concatenate([0.2 + 0.6 * y + 0 * x, 0.3 + 0.4 * x + 0 * y,
                                 0.9 - 0.5 * y * x], axis=2)).astype(np.float32)
    for top in range(200, height - 100, 160):
        img[top:top + 40, 60:width - 60] = rng.integers(0, 256, (40, width - 120, 3))
    img[:90] = (30, 30, 30)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device, warmup: int, iters: int):
    for _ in range(warmup):
        out = fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) * 1000 / iters


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run(device: str = "cuda", dtype: str = "bf16", depth: int = 24,
        max_pixels: int = 5_000_000, warmup: int = 2, iters: int = 5,
        compare_fp32: bool = True) -> dict:
    from transformers import Glm4vVisionConfig
    from transformers.models.glm4v.modeling_glm4v import Glm4vVisionModel

    from modelcore.config import VisionConfig
    from perception.vision.device_patchify import DevicePatchifier
    from perception.vision.model import VisionTower
    from perception.vision.processor import ImageProcessor

    dev, dt = torch.device(device), DTYPES[dtype]
    torch.manual_seed(0)
    hf_cfg = Glm4vVisionConfig(depth=depth)
    hf_cfg._attn_implementation = "sdpa"
    with torch.device(dev):
        reference = Glm4vVisionModel(hf_cfg).eval()
    reference_fp32 = None
    if compare_fp32 and dt != torch.float32:
        reference_fp32 = reference
        with torch.device(dev):
            reference = Glm4vVisionModel(hf_cfg).eval()
        reference.load_state_dict(reference_fp32.state_dict())
    reference = reference.to(dt)
    cfg = VisionConfig(depth=hf_cfg.depth, hidden_size=hf_cfg.hidden_size,
                       num_heads=hf_cfg.num_heads, out_hidden_size=hf_cfg.out_hidden_size,
                       intermediate_size=hf_cfg.intermediate_size, image_size=hf_cfg.image_size,
                       patch_size=hf_cfg.patch_size, rms_norm_eps=hf_cfg.rms_norm_eps,
                       spatial_merge_size=hf_cfg.spatial_merge_size,
                       temporal_patch_size=hf_cfg.temporal_patch_size,
                       hidden_act=hf_cfg.hidden_act, attention_bias=hf_cfg.attention_bias)
    # Same tensors as the reference (no copy): any difference is the implementation's.
    tower = VisionTower.from_state_dict(cfg, dict(reference.state_dict()))

    proc = ImageProcessor(max_pixels=max_pixels)
    shot = synthetic_screenshot()
    start = time.perf_counter()
    processed = proc.preprocess(shot)
    preprocess_ms = (time.perf_counter() - start) * 1000
    pixels = torch.from_numpy(processed.pixel_values).to(dev)
    # The split pipeline: bicubic resize on the CPU, normalise + patchify on the device.
    start = time.perf_counter()
    resized = proc.resize(shot)
    resize_ms = (time.perf_counter() - start) * 1000
    patchify = DevicePatchifier(proc, dev)
    (device_pixels, _), device_patchify_ms = _time_ms(lambda: patchify(resized), dev, 1, 3)
    assert torch.equal(device_pixels, pixels), "device patchify disagrees with ImageProcessor"
    grid = torch.tensor([processed.grid_thw], device=dev)

    with torch.inference_mode():
        ours, ours_ms = _time_ms(lambda: tower(pixels, [processed.grid_thw]), dev, warmup, iters)
        ref, ref_ms = _time_ms(lambda: reference(pixels.to(dt), grid_thw=grid).pooler_output,
                               dev, warmup, iters)
        result = {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "dtype": dtype, "depth": depth, "max_pixels": max_pixels,
            "resized_hw": [processed.grid_thw[1] * 14, processed.grid_thw[2] * 14],
            "image_tokens": processed.num_tokens, "output_shape": list(ours.shape),
            "max_abs_diff": (ours.float() - ref.float()).abs().max().item(),
            "ref_max_abs": ref.float().abs().max().item(),
            "rel_err": _rel(ours, ref),
            "ours_ms_per_image": round(ours_ms, 2), "transformers_ms_per_image": round(ref_ms, 2),
            "preprocess_ms": round(preprocess_ms, 2), "resize_only_ms": round(resize_ms, 2),
            "device_patchify_ms": round(device_patchify_ms, 2), "iters": iters,
        }
        if reference_fp32 is not None:
            truth = reference_fp32(pixels, grid_thw=grid).pooler_output
            result["ours_rel_err_vs_fp32"] = _rel(ours, truth)
            result["transformers_rel_err_vs_fp32"] = _rel(ref, truth)
        if dev.type == "cuda":
            result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--depth", type=int, default=24, help="vision blocks (24 = the real model)")
    ap.add_argument("--max-pixels", type=int, default=5_000_000)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-fp32-check", action="store_true",
                    help="skip the extra fp32 reference run for low-precision dtypes")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    result = run(args.device, args.dtype, args.depth, args.max_pixels, args.warmup, args.iters,
                 compare_fp32=not args.no_fp32_check)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
