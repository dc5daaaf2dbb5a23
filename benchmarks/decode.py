"""`autoglm bench decode`: decode and prefill throughput of the decision engine.

Builds the GLM-4.1V-9B text decoder (40 layers, hidden 4096, 32 heads, 2 KV heads,
intermediate 13696, vocab 151552) with random bf16 weights made directly on the device,
measures the device-to-device copy bandwidth to get the HBM roofline of batch-1 decode
(weight bytes read per token / bandwidth), runs the engine at several batch sizes (CUDA
graphs on CUDA), and runs transformers' own generate on the same weights at batch 1.

    autoglm bench decode                      # full shape on CUDA
    autoglm bench decode --tiny --device cpu  # small shape, for a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

TINY_TEXT = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 mrope_section=(2, 3, 3))
FULL_TEXT = dict(vocab_size=151552, hidden_size=4096, intermediate_size=13696,
                 num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=2,
                 head_dim=128, mrope_section=(8, 12, 12))


def register_bench(sub) -> None:
    p = sub.add_parser("decode", help="decode / prefill tokens per second of the decision engine",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="small random model (CPU smoke test)")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--batch-sizes", default="1,8,32,64", help="decode batch sizes (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--hf-new-tokens", type=int, default=32,
                   help="tokens for transformers' generate at batch 1; 0 skips it (default: %(default)s)")
    p.add_argument("--no-graphs", action="store_true", help="run decode steps eagerly")
    p.add_argument("--no-overlap", action="store_true",
                   help="read each decode step's tokens before queuing the next (lockstep)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the graphed decode step (slow first step per shape)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="after the runs, profile this many batch-1 decode steps and print the "
                        "kernels by GPU time and the host's share of a step (default: off)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-batched-tokens", type=int, default=2048, help="chunked-prefill budget")
    p.add_argument("--out", default=None,
                   help="JSON file (default: benchmarks/results/decode-<device>.json)")
    p.add_argument("--no-json", action="store_true")


def _parse_batches(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"autoglm bench decode: bad --batch-sizes {text!r} (e.g. 1,8,32)") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit("autoglm bench decode: batch sizes must be >= 1")
    return sizes


def run(args) -> int:
    import torch

    import autoglm_kernels as kernels

    batches = _parse_batches(args.batch_sizes)
    if args.prompt_len < 1 or args.new_tokens < 2:
        raise SystemExit("autoglm bench decode: --prompt-len >= 1 and --new-tokens >= 2 needed")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("autoglm bench decode: CUDA is not available (use --device cpu --tiny)")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("autoglm bench decode: the full shape needs a GPU; use --tiny on the CPU")
    torch.manual_seed(0)

    shape = dict(TINY_TEXT if args.tiny else FULL_TEXT)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    model, config = build_random_decoder(shape, device)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                       if "embed_tokens" not in n)
    bw = copy_bandwidth(device)
    roofline = bw / weight_bytes
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {name}; weights read per decode step {weight_bytes / 1e9:.2f} GB; "
          f"copy bandwidth {bw / 1e9:.0f} GB/s; roofline batch-1 {roofline:.1f} tokens/s")

    result = {"command": _command_line(), "software": _software(), "device": name, "shape": shape, "dtype": "bfloat16", "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "cuda_graphs": device.type == "cuda" and not args.no_graphs,
              "compiled_decode": bool(args.compile), "overlap_decode": not args.no_overlap,
              "kernels": kernels.describe(device),
              "weight_bytes": weight_bytes, "copy_bandwidth_GBps": bw / 1e9,
              "roofline_batch1_tokens_per_s": roofline, "engine": []}
    # One engine for every batch size: graphs (and compiled code) are shared, as in serving.
    engine = make_engine(model, max(batches), args)
    for b in batches:
        r = bench_engine(engine, model, b, args, device)
        r["per_seq_tokens_per_s"] = r["decode_tokens_per_s"] / b
        r["fraction_of_roofline_per_seq"] = r["per_seq_tokens_per_s"] / roofline
        result["engine"].append(r)
        print(f"  batch {b:3d}: decode {r['decode_tokens_per_s']:9.1f} tok/s "
              f"({r['per_seq_tokens_per_s']:.1f}/seq, {100 * r['fraction_of_roofline_per_seq']:.0f}% "
              f"of roofline), prefill {r['prefill_tokens_per_s']:9.0f} tok/s", flush=True)
    if args.profile_steps > 0:
        result["profile_batch1"] = profile_decode(engine, model, args, device)
    if args.hf_new_tokens > 0:
        result["transformers"] = bench_transformers(model, config, args, device)
        print(f"  transformers generate batch 1: {result['transformers']['decode_tokens_per_s']:.1f} tok/s")
    print()
    print(format_table(result))
    if not args.no_json:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"
        out = Path(args.out or f"benchmarks/results/decode-{slug}{'-tiny' if args.tiny else ''}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


def build_random_decoder(shape: dict, device):
    """The project's decoder with random bf16 weights created on `device` (no fp32 copy)."""
    import torch

    from decision.decoder import GlmDecoder
    from decision.rope import MRope
    from modelcore.config import ModelConfig, TextConfig

    text = TextConfig(max_position_embeddings=32768, partial_rotary_factor=0.5, **shape)
    config = ModelConfig(text=text)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device), torch.no_grad():
            model = GlmDecoder(config)
            # Default Linear init is U(+-1/sqrt(fan_in)): unit-scale activations, no overflow.
            # The embedding's N(0, 1) rows are scaled down to the same order.
            model.model.embed_tokens.weight.mul_(0.02)
    finally:
        torch.set_default_dtype(previous)
    model.rope = MRope(text, device=device)
    return model.eval(), config


def copy_bandwidth(device, nbytes: int | None = None, iters: int = 10) -> float:
    """Bytes per second moved by a device-to-device copy (read + write counted)."""
    import torch
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 26)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    _sync(device)
    return 2 * nbytes * iters / (time.perf_counter() - t)


def make_engine(model, max_batch: int, args):
    from decision.engine import EngineConfig, LLMEngine

    seq = args.prompt_len + args.new_tokens
    blocks_per_seq = -(-seq // args.block_size)
    return LLMEngine(model, EngineConfig(
        block_size=args.block_size, max_num_seqs=max_batch,
        max_num_batched_tokens=args.max_batched_tokens, num_blocks=max_batch * blocks_per_seq + 2,
        enable_prefix_cache=False, cuda_graphs=not args.no_graphs, compile_decode=args.compile,
        overlap_decode=not args.no_overlap,
        graph_batch_sizes=(1, 2, 4, 8, 16, 32, 64), max_model_len=seq + args.block_size))


def bench_engine(engine, model, batch: int, args, device) -> dict:
    import torch

    from decision.engine import SamplingParams

    seq = args.prompt_len + args.new_tokens
    blocks_per_seq = -(-seq // args.block_size)
    graph_steps_before = engine.stats.graph_steps
    vocab = model.config.text.vocab_size
    gen = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(0, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(batch)]
    if engine.graphs is not None:
        # Capture every bucket this run reaches before timing.
        widths = [w for w in engine.graphs.widths if w // 2 < blocks_per_seq]
        bucket = engine.graphs.bucket(batch, 1)
        engine.graphs.capture(batch_sizes=[bucket[0]], widths=widths)

    def generate(n_new):
        for i, p in enumerate(prompts):
            engine.add_request(f"b{batch}-{n_new}-{i}", p, SamplingParams(max_tokens=n_new))
        _sync(device)
        t0 = time.perf_counter()
        first_token_at = None
        decoded = 0
        finite = True
        while engine.has_unfinished():
            records = engine.step()
            if first_token_at is None and len({r.request_id for r in records}) == batch:
                _sync(device)
                first_token_at = time.perf_counter()
            elif first_token_at is not None:
                decoded += len(records)
        _sync(device)
        return t0, first_token_at, time.perf_counter(), decoded

    generate(4)                                  # warm-up: kernels, allocator
    t0, t1, t2, decoded = generate(args.new_tokens)
    logits_ok = _finite_logits(model, prompts[0], device)
    return {"batch": batch, "prefill_tokens_per_s": batch * args.prompt_len / (t1 - t0),
            "decode_tokens_per_s": decoded / (t2 - t1), "decode_steps_s": t2 - t1,
            "graph_steps": engine.stats.graph_steps - graph_steps_before, "logits_finite": logits_ok}


def profile_decode(engine, model, args, device) -> dict:
    """Where a batch-1 decode step's time goes: GPU kernels by total time (torch.profiler,
    which sees kernels inside graph replays), and the step's wall time against its GPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from decision.engine import SamplingParams

    steps = args.profile_steps
    prompt = list(range(1, args.prompt_len + 1))
    engine.add_request("profile", prompt, SamplingParams(max_tokens=steps + 8))
    for _ in range(4):                       # prefill and the first decodes, unprofiled
        engine.step()
    _sync(device)
    walls = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            t = time.perf_counter()
            engine.step()                    # ends by reading the sampled id: synchronised
            walls.append(time.perf_counter() - t)
    while engine.has_unfinished():
        engine.step()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total_gpu_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:25]
    rows = [{"kernel": e.key[:90], "calls_per_step": e.count / steps,
             "us_per_step": e.self_device_time_total / steps,
             "share": e.self_device_time_total / total_gpu_us} for e in top]
    wall_ms = 1e3 * sorted(walls)[len(walls) // 2]
    gpu_ms = total_gpu_us / steps / 1e3
    print(f"\nprofile, batch 1, {steps} steps: step wall p50 {wall_ms:.2f} ms, GPU busy "
          f"{gpu_ms:.2f} ms/step, kernels {sum(e.count for e in kernels) / steps:.0f}/step")
    for r in rows:
        print(f"  {r['us_per_step']:9.1f} us {100 * r['share']:5.1f}% x{r['calls_per_step']:6.1f}  {r['kernel']}")
    return {"steps": steps, "step_wall_ms_p50": wall_ms, "gpu_busy_ms_per_step": gpu_ms,
            "kernels_per_step": sum(e.count for e in kernels) / steps, "top_kernels": rows}


def _finite_logits(model, prompt, device) -> bool:
    import torch

    from decision.kv_cache import ContiguousKVCache
    with torch.inference_mode():
        ids = torch.tensor(prompt[:16], device=device)
        cache = model.new_cache(len(ids))
        assert isinstance(cache, ContiguousKVCache)
        pos = torch.arange(len(ids), device=device).expand(3, -1)
        logits = model.logits(model.forward(model.embed(ids), pos, cache))
        return bool(torch.isfinite(logits).all())


def bench_transformers(model, config, args, device) -> dict:
    """transformers' eager generate (batch 1) on the very same weight tensors."""
    import torch
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.modeling_glm4v import Glm4vTextRotaryEmbedding

    t = config.text
    hf_cfg = Glm4vConfig(
        text_config=dict(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                         intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                         num_attention_heads=t.num_attention_heads,
                         num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
                         max_position_embeddings=t.max_position_embeddings,
                         rope_parameters=dict(rope_type="default", rope_theta=t.rope_theta,
                                              partial_rotary_factor=t.partial_rotary_factor,
                                              mrope_section=list(t.mrope_section))),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                           out_hidden_size=t.hidden_size), tie_word_embeddings=False)
    with torch.device("meta"):
        hf = Glm4vForConditionalGeneration(hf_cfg)
    hf.load_state_dict(model.checkpoint_tensors(), strict=False, assign=True)
    hf.model.language_model.rotary_emb = Glm4vTextRotaryEmbedding(hf_cfg.text_config).to(device)
    hf.model.visual.to_empty(device=device)
    hf.eval()
    ids = torch.randint(0, t.vocab_size, (1, args.prompt_len), device=device)

    def timed(n):
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        _sync(device)
        return time.perf_counter() - t0

    timed(2)
    t_one, t_n = timed(1), timed(args.hf_new_tokens)
    n = args.hf_new_tokens
    return {"batch": 1, "new_tokens": n, "decode_tokens_per_s": (n - 1) / (t_n - t_one)}


def format_table(r: dict) -> str:
    lines = [f"decode, {r['device']}, {r['shape']['num_hidden_layers']} layers x hidden "
             f"{r['shape']['hidden_size']}, prompt {r['prompt_len']}, {r['new_tokens']} new tokens, "
             f"roofline {r['roofline_batch1_tokens_per_s']:.1f} tok/s "
             f"({r['copy_bandwidth_GBps']:.0f} GB/s copy)",
             f"{'batch':>6} {'decode tok/s':>13} {'per seq':>9} {'% roofline':>11} "
             f"{'prefill tok/s':>14} {'graph steps':>12}"]
    for e in r["engine"]:
        lines.append(f"{e['batch']:>6} {e['decode_tokens_per_s']:>13.1f} {e['per_seq_tokens_per_s']:>9.1f} "
                     f"{100 * e['fraction_of_roofline_per_seq']:>10.0f}% {e['prefill_tokens_per_s']:>14.0f} "
                     f"{e['graph_steps']:>12}")
    if "transformers" in r:
        hf = r["transformers"]["decode_tokens_per_s"]
        b1 = next((e["decode_tokens_per_s"] for e in r["engine"] if e["batch"] == 1), None)
        speedup = f", engine batch 1 is {b1 / hf:.1f}x" if b1 else ""
        lines.append(f"transformers generate, batch 1: {hf:.1f} tok/s{speedup}")
    return "\n".join(lines)


def _command_line() -> str:
    """How this run was started, with the kernel switches that change what it measures."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("AUTOGLM_KERNELS", "AUTOGLM_KERNELS_OFF")
                   if os.environ.get(k))
    prog = ("python -m benchmarks.decode" if sys.argv[0].endswith("decode.py")
            else os.path.basename(sys.argv[0]))
    return " ".join(filter(None, [env, prog, *sys.argv[1:]]))


def _software() -> str:
    import torch
    parts = [f"torch {torch.__version__}"]
    for mod in ("triton", "transformers"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
