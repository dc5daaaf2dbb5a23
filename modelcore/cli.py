"""`autoglm make-checkpoint`: write the embedded default model (or a copy of it) to a directory."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-checkpoint",
        help="write the small built-in GLM-4.1V-architecture checkpoint to DIR",
        description="Write the embedded default checkpoint (random weights, real format: "
                    "config.json, safetensors, tokenizer.json, chat template) to DIR.")
    p.add_argument("dir", help="output directory (created; must be empty if it exists)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.set_defaults(func=_make_checkpoint)


def _make_checkpoint(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"autoglm make-checkpoint: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise SystemExit(f"autoglm make-checkpoint: {out} is not empty (use --force to write anyway)")
    from .make_checkpoint import write_default_checkpoint
    write_default_checkpoint(out, seed=args.seed, dtype=args.dtype)
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({total / 1e6:.1f} MB)")
    return 0
