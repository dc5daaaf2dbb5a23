"""Triton kernels for the decoder's hot path on the GPU, each with the torch code it replaces.

A batch-1 decode step reads 17.6 GB of weights through about ten GEMVs per layer; the
element-wise work between them (sandwich RMSNorms, partial interleaved RoPE, the KV-cache
write, the paged-attention gather, SwiGLU) is tiny in bytes but was ~40 small kernels per
layer. Each kernel here fuses one of those runs into a single launch and rounds at the same
points as the torch code, so bf16 results agree with it to the last bit or nearly (only the
order of fp32 sums differs).

`enabled(tensor)` decides per call: CUDA tensor, Triton importable, and AUTOGLM_KERNELS not
set to "torch" (the switch for A/B runs and for bisecting a numerical question). The
kernels themselves also run under Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors,
which is how the tests check them on a machine without a GPU; the model never takes that
path.
"""
from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def enabled(t: torch.Tensor) -> bool:
    return (t.is_cuda and os.environ.get("AUTOGLM_KERNELS", "triton") != "torch"
            and triton_available())
