"""Kernels run on the GPU where there is one, else under Triton's interpreter on the CPU.

The interpreter must be chosen before triton is first imported (its settings are read then). Nothing else imports them on a CPU-only machine: the model dispatches to kernels
only for CUDA tensors, so this switch affects these tests alone.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton's first import

import triton  # noqa: E402,F401  (a test dependency: pip install -e .[test])

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The interpreter emulates bf16 by truncation and its bf16 tl.dot is wrong, so bf16 is
# checked on the GPU only; fp32 checks the kernels' logic everywhere.
DTYPES = [torch.float32,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
              DEVICE != "cuda", reason="bf16 kernels are checked on a GPU"))]


def tolerance(dtype: torch.dtype) -> dict:
    # bf16: the kernels round where torch rounds; only fp32 sum order differs (<= 1 ulp).
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1.6e-2)
