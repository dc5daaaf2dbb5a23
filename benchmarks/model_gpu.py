"""GPU check of the decoder against transformers at full GLM-4.1V-9B size (run by hand).

    python benchmarks/model_gpu.py --out /data/glm41v-random          # full size, CUDA
    python benchmarks/model_gpu.py --tiny --device cpu --out /tmp/x   # smoke test

Builds Glm4vForConditionalGeneration with random bf16 weights, saves it sharded (~5 GB
shards), times this project's loader (decoder + vision tower) to the device, compares bf16
logits of a 128-token text prompt and a one-image prompt, and times transformers' eager
generate (batch 1). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_ID = 151343


def full_config(tiny: bool):
    from transformers import Glm4vConfig
    rope = dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                mrope_section=[8, 12, 12])
    if tiny:
        text = dict(vocab_size=151552, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1,
                    rope_parameters=dict(rope, mrope_section=[8, 12, 12]))  # head_dim 128
        vision = dict(depth=1, hidden_size=256, num_heads=2, out_hidden_size=256,
                      intermediate_size=512)
    else:
        text = dict(vocab_size=151552, hidden_size=4096, intermediate_size=13696,
                    num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=2,
                    rms_norm_eps=1e-5, max_position_embeddings=65536, rope_parameters=rope)
        vision = dict(depth=24, hidden_size=1536, num_heads=12, out_hidden_size=4096,
                      intermediate_size=13696, image_size=336, patch_size=14)
    return Glm4vConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the random checkpoint")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small config (CPU smoke test)")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing checkpoint in --out")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--image-hw", type=int, nargs=2, default=[28 * 16, 28 * 24],
                    help="resized image height width (multiples of 28)")
    args = ap.parse_args()
    from transformers import Glm4vForConditionalGeneration
    from decision.decoder import GlmDecoder
    from decision.fusion import merge_image_embeddings, mrope_positions
    from perception.vision.model import VisionTower

    device = torch.device(args.device)
    dtype = torch.bfloat16
    out = Path(args.out)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "tiny": args.tiny}

    if not (args.reuse and (out / "config.json").is_file()):
        t = time.perf_counter()
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)  # build directly in bf16: no 40 GB fp32 copy on the GPU
        with torch.device(device):
            hf = Glm4vForConditionalGeneration(full_config(args.tiny)).eval()
        torch.set_default_dtype(torch.float32)
        hf.save_pretrained(out, max_shard_size="5GB")
        report["hf_build_and_save_s"] = round(time.perf_counter() - t, 1)
    else:
        hf = Glm4vForConditionalGeneration.from_pretrained(out, dtype=dtype).to(device).eval()
    report["shards"] = len(list(out.glob("*.safetensors")))

    sync(device)
    t = time.perf_counter()
    dec = GlmDecoder.from_pretrained(out, dtype=dtype, device=device)
    tower = VisionTower.from_pretrained(out, dtype=dtype, device=device)
    sync(device)
    report["our_load_s"] = round(time.perf_counter() - t, 2)
    report["params_text"] = sum(p.numel() for p in dec.parameters())

    g = torch.Generator().manual_seed(0)
    # Text prompt: random ordinary tokens.
    ids = torch.randint(0, 150000, (args.prompt_len,), generator=g)
    # Image prompt: text, <boi> image tokens <eoi>, text.
    h, w = args.image_hw
    grid = (1, h // 14, w // 14)
    n_img = grid[1] * grid[2] // 4
    ids_img = torch.cat([ids[:16], torch.tensor([151339] + [IMAGE_ID] * n_img + [151340]), ids[16:48]])
    pixels = torch.randn(grid[1] * grid[2], 1176, generator=g)

    def compare(name, ids, pixels=None, grids=()):
        ids_d = ids.to(device)
        with torch.no_grad():
            kw = {}
            if pixels is not None:
                kw = dict(pixel_values=pixels.to(device, dtype), image_grid_thw=torch.tensor([grids[0]], device=device),
                          mm_token_type_ids=(ids_d == IMAGE_ID).int()[None])
            ref = hf(input_ids=ids_d[None], **kw).logits[0].float()
            emb = dec.embed(ids_d)
            if pixels is not None:
                emb = merge_image_embeddings(emb, ids_d, IMAGE_ID, tower(pixels.to(device, dtype), list(grids)))
            pos = mrope_positions(ids.tolist(), IMAGE_ID, list(grids), 2)
            sync(device)
            t = time.perf_counter()
            ours = dec.logits(dec(emb, pos.ids.to(device), dec.new_cache(len(ids)))).float()
            sync(device)
        diff = (ours - ref).abs()
        report[name] = {"tokens": len(ids), "max_abs_diff": round(diff.max().item(), 4),
                        "rel_err": round((diff.norm() / ref.norm()).item(), 5),
                        "argmax_agree": round((ours.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
                        "our_prefill_ms": round((time.perf_counter() - t) * 1e3, 1)}

    compare("text_logits", ids)
    compare("image_logits", ids_img, pixels, [grid])

    with torch.no_grad():
        ids_d = ids[None].to(device)
        hf.generate(input_ids=ids_d, max_new_tokens=2, do_sample=False)  # warm-up
        sync(device)
        t = time.perf_counter()
        hf.generate(input_ids=ids_d, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                    do_sample=False, eos_token_id=None, pad_token_id=0)
        sync(device)
        report["hf_eager_generate_tok_s"] = round(args.new_tokens / (time.perf_counter() - t), 2)
    if device.type == "cuda":
        report["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del hf
    gc.collect()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
