"""What the first SDPA call at a new sequence length costs, with and without cuDNN attention.

Every prompt and every image brings a new length to the prefill and vision attention; cuDNN's
backend builds an execution plan per shape, the flash / memory-efficient ones do not. This is
why the CUDA stages switch cuDNN SDPA off (runtime/compute.py).

    python -m benchmarks.sdpa_shapes        # on a GPU
"""
from __future__ import annotations

import time


def first_call_ms(cudnn: bool, lengths) -> tuple[list[float], list[float]]:
    """(first-call ms, repeat-call ms) of causal GQA attention at each new length."""
    import torch
    from torch.nn import functional as F

    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    first, repeat = [], []
    for n in lengths:
        q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 2, n, 128, device="cuda", dtype=torch.bfloat16)
        for out in (first, repeat):
            torch.cuda.synchronize()
            t = time.perf_counter()
            F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            torch.cuda.synchronize()
            out.append(1e3 * (time.perf_counter() - t))
    return first, repeat


def main() -> int:
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("python -m benchmarks.sdpa_shapes: needs a CUDA GPU")
    for cudnn in (True, False):     # CUDA context and both backends loaded before timing
        first_call_ms(cudnn, [8])
    for cudnn, lengths in ((True, range(137, 157, 2)), (False, range(37, 57, 2))):
        first, repeat = first_call_ms(cudnn, lengths)
        print(f"cudnn_sdp={cudnn}: first call per new length {sorted(first)[len(first) // 2]:.2f} ms "
              f"median, max {max(first):.1f}; repeat {sorted(repeat)[len(repeat) // 2]:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
