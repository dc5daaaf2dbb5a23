"""Embeddings handed to the engine as views of a real shm slot (provide_modality(release=)):
used in place, valid for as long as the request may need them (preemption recomputes the
image rows), and the slot given back exactly once on every way out."""
from __future__ import annotations

import os
import uuid

import pytest
import torch

from decision.engine import EngineError, FinishReason, ModalityInput, SamplingParams

from .conftest import IMAGE_TOKEN, make_engine, run_to_end

N_IMG = 4
PROMPT = [7, 8, 502] + [IMAGE_TOKEN] * N_IMG + [503] + list(range(20, 30))
IMAGE_AT = list(range(3, 3 + N_IMG))


@pytest.fixture
def pool():
    from shm import Instance

    inst = Instance.create(f"t-borrow-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                           handle_signals=False)
    try:
        p = inst.create_pool("embeddings", 64 * 1024, 4)
        yield p
    finally:
        inst.close()


def image(seed):
    return torch.randn(N_IMG, 128, generator=torch.Generator().manual_seed(seed))


def put(pool, emb):
    return pool.put(emb.numpy(), readers=1)


class Borrow:
    """A slot read as a zero-copy view, and its release counted (it must come exactly once)."""

    def __init__(self, pool, ref):
        self.pool, self.ref, self.calls = pool, ref, 0
        self.view = pool.read_torch(ref)

    def __call__(self):
        self.calls += 1
        self.pool.release(self.ref)


def request(engine, rid, prompt=PROMPT, max_tokens=6, **kw):
    engine.add_request(rid, prompt, SamplingParams(max_tokens=max_tokens),
                       modalities=[ModalityInput("image0", IMAGE_AT)], **kw)


def reference(decoder, emb, max_tokens=6):
    engine = make_engine(decoder)
    request(engine, "ref", max_tokens=max_tokens)
    engine.provide_modality("ref", "image0", emb.clone())
    return run_to_end(engine)[0]["ref"]


def test_view_is_used_in_place_and_released_when_the_request_finishes(decoder, pool):
    emb = image(1)
    b = Borrow(pool, put(pool, emb))
    engine = make_engine(decoder)
    request(engine, "r")
    engine.provide_modality("r", "image0", b.view, release=b)
    req = engine.requests["r"]
    assert req.embeddings["image0"].data_ptr() == b.view.data_ptr()   # no copy was made
    assert engine.held_views == 1 and b.calls == 0
    first = [r.token_id for r in engine.step()]   # the prefill: still held (preemption needs it)
    assert b.calls == 0 and pool.free_slots() == 3
    out, reasons = run_to_end(engine)
    assert reasons["r"] is FinishReason.LENGTH
    assert first + out["r"] == reference(decoder, emb)
    assert b.calls == 1 and engine.held_views == 0 and pool.free_slots() == 4


@pytest.mark.parametrize("way", ["cancel_waiting", "cancel_running", "error_upstream"])
def test_released_once_when_cancelled(decoder, pool, way):
    engine = make_engine(decoder)
    request(engine, "r")
    request(engine, "other")                   # still waits for its image: must not matter
    b = Borrow(pool, put(pool, image(2)))
    engine.provide_modality("r", "image0", b.view, release=b)
    if way == "cancel_running":
        engine.step()
    engine.cancel("r")
    records = engine.step()
    assert [r.finish_reason for r in records if r.request_id == "r"] == [FinishReason.CANCELLED]
    assert b.calls == 1 and engine.held_views == 0 and pool.free_slots() == 4
    # A late delivery for the finished request is given back at once too.
    late = Borrow(pool, put(pool, image(3)))
    with pytest.raises(EngineError, match="unknown request"):
        engine.provide_modality("r", "image0", late.view, release=late)
    assert late.calls == 1 and pool.free_slots() == 4


def test_released_when_the_engine_errors_the_request(decoder, pool):
    # The prompt fits max_model_len, but prompt + max_tokens needs more blocks than exist:
    # the request is accepted, waits for its image, and ends with "error".
    engine = make_engine(decoder, num_blocks=4)
    request(engine, "r", max_tokens=400)
    (rec,) = engine.step()
    assert rec.finish_reason is FinishReason.ERROR
    b = Borrow(pool, put(pool, image(4)))
    with pytest.raises(EngineError, match="unknown request"):
        engine.provide_modality("r", "image0", b.view, release=b)
    assert b.calls == 1 and pool.free_slots() == 4


def test_rejected_rows_and_duplicates_are_given_back(decoder, pool):
    engine = make_engine(decoder)
    request(engine, "r")
    bad = Borrow(pool, pool.put(torch.zeros(3, 128).numpy()))
    with pytest.raises(EngineError, match=r"expected embeddings \[4, 128\]"):
        engine.provide_modality("r", "image0", bad.view, release=bad)
    assert bad.calls == 1
    first = Borrow(pool, put(pool, image(5)))
    dup = Borrow(pool, put(pool, image(6)))
    engine.provide_modality("r", "image0", first.view, release=first)
    engine.provide_modality("r", "image0", dup.view, release=dup)   # second delivery
    assert (first.calls, dup.calls, engine.held_views) == (0, 1, 1)
    assert pool.free_slots() == 3
    run_to_end(engine)
    assert first.calls == 1 and pool.free_slots() == 4


def test_another_dtype_is_copied_and_released_at_once(decoder, pool):
    engine = make_engine(decoder)
    request(engine, "r")
    b = Borrow(pool, pool.put(image(7).double().numpy()))
    engine.provide_modality("r", "image0", b.view, release=b)
    assert b.calls == 1 and engine.held_views == 0 and pool.free_slots() == 4
    assert engine.requests["r"].embeddings["image0"].dtype == torch.float32
    out, _ = run_to_end(engine)
    assert out["r"] == reference(decoder, image(7).double().float())


def test_preempted_request_recomputes_from_the_held_view(checkpoint, decoder, pool):
    """Memory pressure preempts the image request after its prefill; its recompute needs the
    image rows again, so the view must still be valid (and unchanged) then."""
    imgs = [image(10 + i) for i in range(3)]
    refs = [reference(decoder, e, max_tokens=12) for e in imgs]
    engine = make_engine(decoder, num_blocks=16, enable_prefix_cache=False)
    borrows = []
    for i, e in enumerate(imgs):
        request(engine, f"p{i}", max_tokens=12)
        b = Borrow(pool, put(pool, e))
        engine.provide_modality(f"p{i}", "image0", b.view, release=b)
        borrows.append(b)
    out, _ = run_to_end(engine)
    assert engine.stats.preemptions > 0
    for i in range(3):
        assert out[f"p{i}"] == refs[i], f"p{i}"
        assert borrows[i].calls == 1
    assert engine.held_views == 0 and pool.free_slots() == 4


def test_release_views_copies_out_and_the_request_runs_on(decoder, pool):
    emb = image(20)
    engine = make_engine(decoder)
    request(engine, "r")
    request(engine, "s")
    b, c = Borrow(pool, put(pool, emb)), Borrow(pool, put(pool, image(21)))
    engine.provide_modality("r", "image0", b.view, release=b)
    engine.provide_modality("s", "image0", c.view, release=c)
    first = {r.request_id: [r.token_id] for r in engine.step()}
    assert engine.release_views(keep=True, limit=1) == 1
    assert engine.held_views == 1 and pool.free_slots() == 3
    # The slot given back may be rewritten at once: the request kept its own copy.
    given_back = b if b.calls else c
    assert given_back.calls == 1
    pool.put(torch.full((N_IMG, 128), 9.0).numpy())
    out, _ = run_to_end(engine)
    want = "r" if given_back is b else "s"
    assert first[want] + out[want] == reference(decoder, emb if want == "r" else image(21))
    assert b.calls == c.calls == 1 and engine.held_views == 0


def test_release_views_without_keep_for_a_discarded_engine(decoder, pool):
    engine = make_engine(decoder)
    request(engine, "r")
    b = Borrow(pool, put(pool, image(30)))
    engine.provide_modality("r", "image0", b.view, release=b)
    assert engine.release_views(keep=False) == 1
    assert b.calls == 1 and engine.held_views == 0 and pool.free_slots() == 4


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_a_page_locked_view_is_copied_to_the_gpu_by_the_step(checkpoint, pool):
    """On a GPU the hand-off does no CUDA work: the step that needs the rows queues their copy
    (a DMA from the page-locked pool), and the slot goes back only once that copy is done."""
    from decision.decoder import GlmDecoder
    from runtime.host_pinning import PinnedPools

    model_dir, _ = checkpoint
    dec = GlmDecoder.from_pretrained(model_dir, dtype=torch.float32, device="cuda")
    pinned = PinnedPools()
    assert pinned.pin(pool) is None
    try:
        emb, other = image(40), image(41)
        b, c = Borrow(pool, put(pool, emb)), Borrow(pool, put(pool, other))
        assert b.view.is_pinned()
        engine = make_engine(dec)
        request(engine, "r")
        request(engine, "s")
        engine.provide_modality("r", "image0", b.view, release=b)
        engine.provide_modality("s", "image0", c.view, release=c)
        assert engine.requests["r"].embeddings["image0"].data_ptr() == b.view.data_ptr()
        first = {"r": [], "s": []}
        for rec in engine.step():      # both prefills (with overlap their tokens come later)
            first[rec.request_id].append(rec.token_id)
        assert engine.requests["r"].embeddings["image0"].is_cuda
        assert (b.calls, c.calls, engine.held_views) == (0, 0, 2)
        assert engine.release_views(keep=True, limit=1) == 1   # on the device already: no clone
        given_back, kept = (b, c) if b.calls else (c, b)
        assert (given_back.calls, kept.calls, engine.held_views) == (1, 0, 1)
        stranger = pool.put(torch.full((N_IMG, 128), 9.0).numpy())   # its slot rewritten
        out, _ = run_to_end(engine)
        pool.release(stranger)
        assert kept.calls == 1 and engine.held_views == 0 and pool.free_slots() == 4
        for rid, e in (("r", emb), ("s", other)):
            assert first[rid] + out[rid] == reference(dec, e)
    finally:
        pinned.unpin()
