"""CUDA-graph decode on a GPU (runs where CUDA is present; the CPU suite covers the rest)."""
from __future__ import annotations

import copy

import pytest
import torch

from decision.engine import SamplingParams

from .conftest import make_engine, run_to_end

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def gpu_models(checkpoint):
    from decision.decoder import GlmDecoder
    model_dir, hf = checkpoint
    torch.backends.cuda.matmul.allow_tf32 = False
    dec = GlmDecoder.from_pretrained(model_dir, dtype=torch.float32, device="cuda")
    return dec, copy.deepcopy(hf).to("cuda")   # the CPU tests share `hf`: leave it there


@cuda
def test_graph_decode_matches_transformers_and_eager(gpu_models):
    dec, hf = gpu_models
    g = torch.Generator().manual_seed(0)
    ps = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (5, 70, 13)]
    outs = {}
    for graphs in (True, False):
        engine = make_engine(dec, cuda_graphs=graphs, num_blocks=256)
        for i, p in enumerate(ps):
            engine.add_request(f"r{i}", p, SamplingParams(max_tokens=20 + 5 * i))
        outs[graphs], _ = run_to_end(engine)
        assert engine.stats.chained_steps > 10     # overlapped decode is on by default on CUDA
        if graphs:
            assert engine.stats.graph_steps > 10
            # batch 3 padded to the captured size 4
            assert any(k[0] == 4 for k in engine.graphs.graphs)
    assert outs[True] == outs[False]
    for i, p in enumerate(ps):
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            ref = hf.generate(input_ids=ids, max_new_tokens=20 + 5 * i,
                              min_new_tokens=20 + 5 * i, do_sample=False)[0, len(p):].tolist()
        assert outs[True][f"r{i}"] == ref


@cuda
def test_seeded_sampling_on_gpu_is_batch_independent(gpu_models):
    dec, _ = gpu_models
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    alone = make_engine(dec, num_blocks=256)
    alone.add_request("s", list(range(10, 30)), params)
    ref, _ = run_to_end(alone)
    batch = make_engine(dec, num_blocks=256)
    for i in range(5):
        batch.add_request(f"o{i}", list(range(40 + i, 60)), SamplingParams(max_tokens=20, temperature=1.0))
    batch.add_request("s", list(range(10, 30)), params)
    out, _ = run_to_end(batch)
    assert out["s"] == ref["s"]
