"""Helpers shared by the minimal stage computes (fixed random projections, ref conversion).

The compute of a stage is what later issues replace; it sees only a `StageContext`
(runtime/stage.py) and never DDS or process management.
"""
from __future__ import annotations

import hashlib

import numpy as np


def fixed_projection(n_in: int, n_out: int, seed: int) -> np.ndarray:
    """A deterministic [n_in, n_out] float32 matrix, scaled so outputs keep unit variance."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)


def request_key(request_id: str) -> int:
    """A 63-bit number standing for a request id inside fixed-size token records."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little") >> 1


def slot_ref(shm_ref):
    """control ShmRef -> shm SlotRef."""
    from shm.pool import SlotRef

    return SlotRef(shm_ref.channel, int(shm_ref.slot), int(shm_ref.generation))


def shm_ref(slot_ref, nbytes: int = 0):
    """shm SlotRef -> control ShmRef."""
    from control.messages import ShmRef

    return ShmRef(channel=slot_ref.channel, slot=int(slot_ref.slot),
                  generation=int(slot_ref.generation), nbytes=int(nbytes))


# --- what the real stage computes share -------------------------------------------------------
# `autoglm launch --model/--host/--port` (and the gateway flags) reach every stage through these variables (the stage
# processes re-read the spec file, so command-line overrides travel in their environment).
ENV_MODEL_DIR = "AUTOGLM_MODEL_DIR"
ENV_HTTP_HOST = "AUTOGLM_HTTP_HOST"
ENV_HTTP_PORT = "AUTOGLM_HTTP_PORT"
ENV_GATEWAY = "AUTOGLM_GATEWAY_PARAMS"  # JSON: gateway params given as `autoglm launch` flags
COMPUTES = ("model", "minimal")
# What a stage says it does, after its device, in its ready state's detail ("device cuda:0;
# resizes frames"): the vision stage resizes frames on its GPU, so the gateway may send them
# at their own size.
RESIZES_FRAMES = "resizes frames"


def ready_detail(device, notes=()) -> str:
    """A ready (or busy) state's detail: "device cuda:0; resizes frames"."""
    return "; ".join(([f"device {device}"] if device is not None else []) + list(notes))


def read_ready_detail(detail: str) -> tuple[str | None, list[str]]:
    """(device or None, notes) of a detail ready_detail() wrote."""
    parts = detail.split("; ") if detail else []
    if parts and parts[0].startswith("device "):
        return parts[0].removeprefix("device "), parts[1:]
    return None, parts


def compute_kind(ctx) -> str:
    """`params.compute` of a stage: "model" (the real model) or "minimal" (the fixed random
    projections that stand in for it in plumbing tests). Absent = "minimal", so specs written
    for the plumbing keep their meaning; the default spec says "model"."""
    kind = str(ctx.params.get("compute", "minimal"))
    if kind not in COMPUTES:
        raise ValueError(f"stages.{ctx.name}.params.compute: must be one of "
                         f"{', '.join(COMPUTES)}, got {kind!r}")
    return kind


def resolve_model_dir(ctx) -> str:
    """--model, else the spec's [pipeline].model_dir, else the embedded default checkpoint."""
    import os

    d = os.environ.get(ENV_MODEL_DIR) or ctx.model_dir
    if d:
        return d
    from modelcore.make_checkpoint import ensure_default_checkpoint
    return str(ensure_default_checkpoint())


def resolve_http(ctx) -> tuple[str, int]:
    import os

    host, port = ctx.http
    return os.environ.get(ENV_HTTP_HOST) or host, int(os.environ.get(ENV_HTTP_PORT) or port)


def torch_device_dtype(ctx):
    """(device, dtype) from the stage spec: gpu "cuda[:N]" when CUDA is there (else the CPU,
    said in the log), params.dtype "auto" = bf16 on CUDA, fp32 on the CPU."""
    import torch

    want = ctx.stage.gpu
    if want.startswith("cuda") and torch.cuda.is_available():
        device = torch.device(want)
    else:
        if want.startswith("cuda"):
            ctx.log(f"gpu {want!r} asked for but CUDA is not available: running on the CPU")
        device = torch.device("cpu")
    names = {"auto": None, "float32": torch.float32, "fp32": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    name = str(ctx.params.get("dtype", "auto"))
    if name not in names:
        raise ValueError(f"stages.{ctx.name}.params.dtype: must be one of {', '.join(names)}, "
                         f"got {name!r}")
    dtype = names[name] or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        # cuDNN's attention builds an execution plan for every new sequence length, and every
        # prompt and image brings one: flash / memory-efficient SDPA need none.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if device.type == "cpu":
        import os
        # One thread per pinned core: more would fight over the same core.
        torch.set_num_threads(int(ctx.params.get("threads") or len(os.sched_getaffinity(0))))
    return device, dtype


# --- audio placeholders in the prompt (the gateway writes them, decision finds them) ----------
# GLM-4.1V's tokenizer has no audio tokens. A checkpoint that has <|begin_of_audio|> <|audio|>
# <|end_of_audio|> gets those; otherwise the video placeholders stand in (the decoder gives
# them plain 1-D positions, as audio needs, and GLM-4.1V never sees video in this pipeline).
# One <|audio|> (or <|video|>) token per audio embedding row, wrapped by begin/end.
AUDIO_TOKEN_SETS = (("<|begin_of_audio|>", "<|audio|>", "<|end_of_audio|>"),
                    ("<|begin_of_video|>", "<|video|>", "<|end_of_video|>"))


def audio_placeholder(tokenizer) -> tuple[str, str, str] | None:
    """(begin, token, end) names of the audio placeholder for this tokenizer (GlmTokenizer)."""
    for names in AUDIO_TOKEN_SETS:
        if all(tokenizer.token_id(n) is not None for n in names):
            return names
    return None
