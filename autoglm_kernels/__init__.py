"""Triton kernels for the decoder's hot path on the GPU, each with the torch code it replaces.

A batch-1 decode step of GLM-4.1V-9B reads 17.6 GB of weights through four GEMVs per layer
(gemv: a weight-streaming kernel that beats cuBLAS's split-K choice at 1-16 rows). The
element-wise work between them (sandwich RMSNorms, partial interleaved RoPE, the KV-cache
write, the paged-attention gather, SwiGLU) is tiny in bytes but was ~60 small kernels per
layer (norm, rope, attention, activation fuse them to 6). The fused kernels round at the
same points as the torch code, so bf16 results agree with it to the last bit or nearly
(only the order of fp32 sums differs).

`enabled(tensor, kernel)` decides per call: CUDA tensor, Triton importable, AUTOGLM_KERNELS
not set to "torch", and `kernel` (a module name here: norm, rope, attention, activation,
gemv) not listed in AUTOGLM_KERNELS_OFF. Those switches are for A/B runs and for bisecting a
numerical question. The kernels themselves also run under Triton's interpreter
(TRITON_INTERPRET=1) on CPU tensors, which is how the tests check them on a machine without
a GPU; the model never takes that path.
"""
from __future__ import annotations

import functools
import os

import torch

# Rows up to which autoglm_kernels.gemv replaces cuBLAS (its tiles hold 16 rows).
GEMV_MAX_ROWS = 16


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


KERNELS = ("norm", "rope", "attention", "activation", "gemv")


def enabled(t: torch.Tensor, kernel: str) -> bool:
    return t.is_cuda and triton_available() and kernel in _switched_on()


@functools.cache   # read once per process: the switches are for whole runs
def _switched_on() -> frozenset[str]:
    if os.environ.get("AUTOGLM_KERNELS", "triton") == "torch":
        return frozenset()
    off = {k.strip() for k in os.environ.get("AUTOGLM_KERNELS_OFF", "").split(",")} - {""}
    unknown = off - set(KERNELS)
    if unknown:
        raise ValueError(f"AUTOGLM_KERNELS_OFF names no kernel {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(KERNELS)}")
    return frozenset(KERNELS) - off


def describe(device: torch.device) -> str:
    """Which kernels a model on `device` runs, for benchmark records."""
    on = [k for k in KERNELS if enabled(torch.empty(0, device=device), k)]
    return "triton: " + ", ".join(on) if on else "torch"
