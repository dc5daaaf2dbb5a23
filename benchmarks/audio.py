"""`autoglm bench audio`: audio-stage latency per backend, on a Whisper-base-sized encoder.

What is timed: `AudioPipeline.process(pcm, 16000)` in embed mode for 5 s and 30 s clips,
i.e. log-mel + encoder + low-rank adapter (--mode transcribe: + greedy decoding of a fixed
number of tokens with Whisper-base's decoder) (16 kHz input, so no resampling; resampling is
timed separately for a 48 kHz clip). Backends: torch (CPU or --device cuda), ONNX Runtime
fp32, ONNX Runtime int8 (dynamic quantisation). The model is random with Whisper-base's shape
(d_model 512, 6 encoder layers, 8 heads, FFN 2048, 80 mel bins) and an adapter of rank 64
into GLM-4.1V's 4096-wide decoder; latency does not depend on the weight values. int8's
accuracy cost is reported as the relative error and cosine similarity of its embeddings
against torch fp32 on the same clip.

Registered by benchmarks/cli.py (BENCH_MODULES gains "benchmarks.audio"); also runnable as
`python -m benchmarks.audio`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

BASE = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80)
BACKENDS = ("torch", "onnx", "onnx-int8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of %(default)s")
    p.add_argument("--clips", default="5,30", help="clip lengths in seconds (default: %(default)s)")
    p.add_argument("--iters", type=int, default=5, help="timed runs per cell (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    p.add_argument("--device", default="cpu", help="torch device for the torch backend (default: %(default)s)")
    p.add_argument("--trim", action="store_true", help="also time trim_last_window=True (encode only the audio)")
    p.add_argument("--mode", choices=("embed", "transcribe"), default="embed",
                   help="embed: encoder + adapter; transcribe: encoder + greedy decoding of --tokens tokens "
                        "with Whisper-base's decoder and 51 865-token vocabulary (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=32, help="tokens generated per window in transcribe mode (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="JSON result file (default: benchmarks/results/audio-cpu.json, audio-cpu-transcribe.json)")
    p.add_argument("--no-json", action="store_true", help="print the table only")


def register_bench(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "audio", help="audio stage latency: torch vs ONNX Runtime vs ONNX Runtime int8",
        description=__doc__.split("\n\n")[1])
    add_arguments(p)
    p.set_defaults(func=run)


def _machine(threads: int) -> dict:
    import onnxruntime
    import torch
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)), "threads": threads,
            "load_avg_at_start": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers()}


def _time(fn, iters: int) -> dict:
    fn()                                   # warm-up: first-run allocations, ORT graph setup
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 2), "min_ms": round(samples[0], 2),
            "max_ms": round(samples[-1], 2), "iters": iters}


def build_model(root: Path, with_decoder: bool = False, tokens: int = 32) -> Path:
    from perception.audio.config import AdapterConfig, WhisperConfig
    from perception.audio.writer import build_byte_tokenizer, write_adapter, write_whisper_checkpoint

    tok = build_byte_tokenizer()
    # Whisper-base's vocabulary size, so the output projection costs what it really does; the
    # byte tokenizer skips ids it does not know when decoding text.
    cfg = WhisperConfig(**BASE, vocab_size=51865 if with_decoder else tok.get_vocab_size(),
                        decoder_start_token_id=tok.token_to_id("<|startoftranscript|>"),
                        eos_token_id=tok.token_to_id("<|endoftext|>"))
    audio = write_whisper_checkpoint(root / "audio", cfg, seed=0, tokenizer=tok, with_decoder=with_decoder)
    if with_decoder:
        gen_path = audio / "generation_config.json"
        gen = json.loads(gen_path.read_text())
        # A fixed token count per window: a random model's end-of-text is a coin toss.
        gen.update(max_new_tokens=tokens, begin_suppress_tokens=[], suppress_tokens=[cfg.eos_token_id])
        gen_path.write_text(json.dumps(gen))
    write_adapter(audio, AdapterConfig(encoder_d_model=512, rank=64, decoder_hidden=4096, pooling=4))
    return root


def run(args) -> int:
    import numpy as np

    from perception.audio import AudioPipeline
    from perception.audio.resample import resample

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise SystemExit(f"autoglm bench: unknown audio backend(s) {', '.join(bad)}; known: {', '.join(BACKENDS)}")
    try:
        clips = [float(c) for c in args.clips.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"autoglm bench: --clips wants seconds like 5,30, got {args.clips!r}") from None
    if not clips or any(not 0 < c <= 600 for c in clips) or args.iters < 1:
        raise SystemExit("autoglm bench: clips must be in (0, 600] s and --iters >= 1")
    threads = args.threads or len(os.sched_getaffinity(0))
    machine = _machine(threads)
    print(f"machine: {machine['cpu']}, {machine['usable_cpus']} cpus, {threads} threads, "
          f"load {machine['load_avg_at_start'][0]:.2f}")
    rng = np.random.default_rng(0)
    t = np.arange(int(max(clips) * 16000)) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
              + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    rows, embeddings = [], {}
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-audio-") as tmp:
        model_dir = build_model(Path(tmp), with_decoder=args.mode == "transcribe", tokens=args.tokens)
        variants = [(b, False) for b in backends] + ([(b, True) for b in backends] if args.trim else [])
        for backend, trim in variants:
            t0 = time.perf_counter()
            pipe = AudioPipeline.from_dir(model_dir, mode=args.mode, backend=backend.split("-")[0],
                                          quantize_int8=backend.endswith("int8"), device=args.device,
                                          threads=threads, trim_last_window=trim)
            load_s = time.perf_counter() - t0
            for seconds in clips:
                pcm = speech[: int(seconds * 16000)]
                timing = _time(lambda: pipe.process(pcm, 16000), args.iters)
                result = pipe.process(pcm, 16000)
                win = result.windows[0]
                row = {"backend": backend, "mode": args.mode, "trim_last_window": trim, "clip_s": seconds,
                       "providers": pipe.providers, "load_or_export_s": round(load_s, 2), **timing,
                       "last_encode_ms": round(win.encode_ms, 1), "last_decode_ms": round(win.decode_ms, 1)}
                if args.mode == "embed":
                    row["tokens"] = result.n_tokens
                    if not trim:
                        embeddings[(backend, seconds)] = result.embeddings
                else:
                    row["tokens"] = len(win.token_ids)
                    row["decode_ms_per_token"] = round(win.decode_ms / max(1, len(win.token_ids)), 2)
                    if not trim:
                        embeddings[(backend, seconds)] = win.token_ids
                rows.append(row)
                print(f"  {backend:10s} trim={trim!s:5s} {seconds:5.1f} s clip: median {timing['median_ms']:8.1f} ms "
                      f"(min {timing['min_ms']:.1f}, max {timing['max_ms']:.1f}), {row['tokens']} tokens")
        for row in rows:
            ref = embeddings.get(("torch", row["clip_s"]))
            if args.mode == "transcribe":
                mine = embeddings.get((row["backend"], row["clip_s"]))
                if ref is not None and mine is not None and row["backend"] != "torch" and not row["trim_last_window"]:
                    row["same_tokens_as_torch"] = sum(a == b for a, b in zip(mine, ref))
                continue
            mine = embeddings.get((row["backend"], row["clip_s"]))
            if ref is not None and mine is not None and row["backend"] != "torch" and not row["trim_last_window"]:
                row["rel_err_vs_torch"] = float(np.linalg.norm(mine - ref) / np.linalg.norm(ref))
                cos = (mine * ref).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(ref, axis=1)
                row["min_cosine_vs_torch"] = float(cos.min())
        resample_s = min(30.0, max(clips))
        pcm48 = resample(speech[: int(resample_s * 16000)], 16000, 48000)
        resample_ms = _time(lambda: resample(pcm48, 48000, 16000), args.iters) | {"clip_s": resample_s}
    print()
    print(format_table(rows))
    print(f"\nresampling {resample_ms['clip_s']:g} s 48 kHz -> 16 kHz (soxr HQ): median {resample_ms['median_ms']} ms")
    if not args.no_json:
        out = Path(args.out or ("benchmarks/results/audio-cpu.json" if args.mode == "embed"
                                else "benchmarks/results/audio-cpu-transcribe.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "audio", "mode": args.mode,
            "what": ("AudioPipeline.process, 16 kHz input: log-mel + encoder + " +
                     ("adapter" if args.mode == "embed" else f"greedy decoding of {args.tokens} tokens")),
            "model": {"whisper": BASE | ({"vocab_size": 51865} if args.mode == "transcribe" else {"decoder_layers": 0}),
                      "adapter": {"rank": 64, "decoder_hidden": 4096, "pooling": 4},
                      "weights": "random (latency does not depend on values)"},
            "machine": machine, "resample_48k_to_16k": resample_ms, "results": rows,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
        print(f"wrote {out}")
    return 0


def format_table(rows: list[dict]) -> str:
    lines = ["| backend | trim | clip | median ms | min ms | tokens | rel. err vs torch | min cos | decode ms/token |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['rel_err_vs_torch']:.2e}" if "rel_err_vs_torch" in r else "-"
        cos = f"{r['min_cosine_vs_torch']:.4f}" if "min_cosine_vs_torch" in r else "-"
        if "same_tokens_as_torch" in r:
            err = f"{r['same_tokens_as_torch']}/{r['tokens']} tokens same"
        lines.append(f"| {r['backend']} | {'yes' if r['trim_last_window'] else 'no'} | {r['clip_s']:g} s | "
                     f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['tokens']} | {err} | {cos} | "
                     f"{r.get('decode_ms_per_token', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audio", description=__doc__.split("\n\n")[1])
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
