"""How many KV cache blocks the engine plans: an explicit size on the CPU; on CUDA the free
memory less the reserve, capped at what the engine can use, and a clear error with figures
when nothing is left."""
from __future__ import annotations

import pytest
import torch

from decision.engine.kv_cache import CacheTooSmall, bytes_per_block, plan_num_blocks

SHAPE = dict(num_layers=2, block_size=16, kv_heads=2, head_dim=32, dtype=torch.float32)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_an_explicit_size_is_taken_whole_and_the_cpu_needs_one():
    per_block = bytes_per_block(**SHAPE)
    cpu = torch.device("cpu")
    assert plan_num_blocks(**SHAPE, device=cpu, kv_cache_bytes=100 * per_block,
                           max_useful_blocks=10) == 100   # a size given is not capped
    with pytest.raises(CacheTooSmall, match="on the CPU give the KV cache size"):
        plan_num_blocks(**SHAPE, device=cpu)
    with pytest.raises(CacheTooSmall, match="holds 1 blocks"):
        plan_num_blocks(**SHAPE, device=cpu, kv_cache_bytes=per_block)


@cuda
def test_the_cuda_default_takes_what_the_engine_can_use_not_the_gpu():
    gpu = torch.device("cuda")
    assert plan_num_blocks(**SHAPE, device=gpu, max_useful_blocks=1000) == 1000
    free, total = torch.cuda.mem_get_info(gpu)
    uncapped = plan_num_blocks(**SHAPE, device=gpu)
    assert uncapped * bytes_per_block(**SHAPE) <= free - 0.1 * total


@cuda
def test_no_room_on_the_gpu_is_said_with_its_figures():
    # A reserve of the whole GPU leaves nothing, as another pipeline holding it would.
    with pytest.raises(CacheTooSmall, match=r"GiB free of .* GiB and gpu_memory_utilization 0 "
                                            r"keeps .* back .*params\.kv_cache_mb"):
        plan_num_blocks(**SHAPE, device=torch.device("cuda"), gpu_memory_utilization=0.0)
