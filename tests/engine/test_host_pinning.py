"""Page-locking a stage's shm pools (runs where CUDA is present)."""
from __future__ import annotations

import os
import uuid

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_pinned_pool_views_are_page_locked_and_a_failure_is_told_not_raised_later():
    from runtime.host_pinning import PinnedPools
    from shm import Instance

    inst = Instance.create(f"t-pin-{os.getpid()}-{uuid.uuid4().hex[:8]}", handle_signals=False)
    try:
        pool = inst.create_pool("embeddings", 1 << 20, 4)
        pinned = PinnedPools()
        assert pinned.pin(pool) is None
        ref = pool.put(torch.randn(16, 64).numpy())
        view = pool.read_torch(ref)
        assert view.is_pinned()
        assert torch.equal(view.to("cuda", non_blocking=True).cpu(), view)
        # A second registration of the same pages fails: said, and the CUDA runtime's last
        # error is cleared, so the next kernel launch does not raise it.
        problem = pinned.pin(pool)
        assert problem and "cudaHostRegister of 'embeddings'" in problem
        assert torch.ones(8, device="cuda").sum().item() == 8.0
        pool.release(ref)
        pinned.unpin()
        assert not pool.read_torch(pool.put(torch.zeros(2, 2).numpy())).is_pinned()
    finally:
        inst.close()


@cuda
def test_a_stage_locks_its_pools_not_its_rings_and_says_what_it_could_not_lock():
    from types import SimpleNamespace

    from runtime.host_pinning import pin_pools
    from shm import Instance

    inst = Instance.create(f"t-pin-{os.getpid()}-{uuid.uuid4().hex[:8]}", handle_signals=False)
    try:
        pools = {name: inst.create_pool(name, 1 << 20, 2) for name in ("frames", "embeddings")}
        kinds = {"frames": "pool", "embeddings": "pool", "tokens": "ring"}
        logged = []
        ctx = SimpleNamespace(launch=SimpleNamespace(channels={n: SimpleNamespace(kind=k)
                                                               for n, k in kinds.items()}),
                              pool=pools.__getitem__, log=logged.append)
        pinned = pin_pools(ctx, ["frames", "tokens", "embeddings"])
        assert logged == []
        for pool in pools.values():
            assert pool.read_torch(pool.put(torch.zeros(4, 4).numpy())).is_pinned()
        again = pin_pools(ctx, ["frames", "embeddings"])   # the same pages a second time
        assert len(logged) == 2 and all("staging buffer" in line for line in logged)
        again.unpin()
        pinned.unpin()
    finally:
        inst.close()
