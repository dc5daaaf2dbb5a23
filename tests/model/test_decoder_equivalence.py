"""The decoder + fusion against transformers' Glm4vForConditionalGeneration, fp32."""
from __future__ import annotations

import json

import pytest
import torch

from decision.decoder import GlmDecoder
from decision.fusion import mrope_positions, merge_image_embeddings
from decision.generate import continuation_logits, generate_ids
from tests.model.conftest import BOI, EOI, IMAGE

TOL = 2e-4


def _image_features(hf, grids, seed=0):
    """Vision outputs for random patches; the decoder's job starts from these embeddings."""
    g = torch.Generator().manual_seed(seed)
    n = sum(t * h * w for t, h, w in grids)
    pixels = torch.randn(n, 3 * 2 * 14 * 14, generator=g)
    grid = torch.tensor(grids)
    with torch.no_grad():
        feats = torch.cat(hf.model.get_image_features(pixels, grid).pooler_output)
    return pixels, grid, feats


def _prompt(grids, text_after=7, seed=0):
    """[text] (BOI image* EOI [text])* with random text tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 290, (5,), generator=g).tolist()
    for t, h, w in grids:
        ids += [BOI] + [IMAGE] * (t * h * w // 4) + [EOI]
        ids += torch.randint(0, 290, (text_after,), generator=g).tolist()
    return ids


def _ours(dec, ids, grids, feats):
    ids_t = torch.tensor(ids)
    with torch.no_grad():
        embeds = dec.embed(ids_t)
        if grids:
            embeds = merge_image_embeddings(embeds, ids_t, IMAGE, feats)
        pos = mrope_positions(ids, IMAGE, grids, 2)
        logits = dec.logits(dec(embeds, pos.ids, dec.new_cache(len(ids))))
    return logits, pos


def _reference(hf, ids, pixels=None, grid=None):
    from transformers import Glm4vProcessor
    ids_t = torch.tensor([ids])
    kwargs = {}
    if pixels is not None:
        mm = (ids_t == IMAGE).int()
        kwargs = dict(pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=mm)
    with torch.no_grad():
        return hf(input_ids=ids_t, **kwargs).logits[0]


@pytest.mark.parametrize("grids", [[], [(1, 4, 6)], [(1, 4, 8), (1, 6, 2)]],
                         ids=["text", "one-image", "two-images"])
def test_logits_match_transformers(hf_tiny, grids):
    hf, path = hf_tiny
    dec = GlmDecoder.from_pretrained(path)
    ids = _prompt(grids)
    pixels = grid = feats = None
    if grids:
        pixels, grid, feats = _image_features(hf, grids)
    ref = _reference(hf, ids, pixels, grid)
    ours, _ = _ours(dec, ids, grids, feats)
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err < TOL, f"max abs logit difference {err}"


def test_positions_match_get_rope_index(hf_tiny):
    hf, _ = hf_tiny
    grids = [(1, 4, 8), (1, 6, 2), (1, 2, 2)]
    ids = _prompt(grids, text_after=3)
    ids_t = torch.tensor([ids])
    ref_pos, ref_delta = hf.model.get_rope_index(ids_t, (ids_t == IMAGE).int(), torch.tensor(grids))
    pos = mrope_positions(ids, IMAGE, grids, 2)
    assert torch.equal(pos.ids, ref_pos[:, 0])
    assert pos.rope_delta == int(ref_delta)
    # The image rows differ across t/h/w; text rows do not; text after an image jumps.
    assert not torch.equal(pos.ids[1], pos.ids[2])
    assert pos.rope_delta < 0


def test_partial_interleaved_rope_is_what_matters(hf_tiny):
    """Rotating half-split (NeoX) pairs instead of interleaved ones must break equivalence:
    guards the test itself against a rope detail that does not reach the logits."""
    import decision.rope as rope
    hf, path = hf_tiny
    dec = GlmDecoder.from_pretrained(path)
    grids = [(1, 4, 6)]
    ids = _prompt(grids)
    pixels, grid, feats = _image_features(hf, grids)
    ref = _reference(hf, ids, pixels, grid)
    original = rope._rotate_pairs
    try:
        rope._rotate_pairs = lambda x: torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), -1)
        wrong, _ = _ours(dec, ids, grids, feats)
    finally:
        rope._rotate_pairs = original
    assert (wrong - ref).abs().max().item() > 100 * TOL


def test_sharded_checkpoint_loads_and_matches(hf_tiny_sharded):
    hf, path = hf_tiny_sharded
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    dec = GlmDecoder.from_pretrained(path)
    ids = _prompt([])
    err = (_ours(dec, ids, [], None)[0] - _reference(hf, ids)).abs().max().item()
    assert err < TOL


def test_greedy_generation_identical(hf_tiny):
    hf, path = hf_tiny
    dec = GlmDecoder.from_pretrained(path)
    grids = [(1, 4, 8), (1, 6, 2)]
    ids = _prompt(grids)
    pixels, grid, feats = _image_features(hf, grids)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids_t, pixel_values=pixels, image_grid_thw=grid,
                          mm_token_type_ids=(ids_t == IMAGE).int(), max_new_tokens=32,
                          min_new_tokens=32, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(ids):].tolist()
        embeds = merge_image_embeddings(dec.embed(torch.tensor(ids)), torch.tensor(ids), IMAGE, feats)
        pos = mrope_positions(ids, IMAGE, grids, 2)
        ours = generate_ids(dec, embeds, pos.ids, pos.rope_delta, 32)
    assert len(ref) == 32
    assert ours == ref


def test_continuation_logits_match_transformers_teacher_forced(hf_tiny):
    """Scoring a continuation in one forward: row i is transformers' logits after the prompt
    and ids[:i], and greedy ids are each row's argmax."""
    hf, path = hf_tiny
    dec = GlmDecoder.from_pretrained(path)
    grids = [(1, 4, 8)]
    ids = _prompt(grids)
    pixels, grid, feats = _image_features(hf, grids)
    with torch.no_grad():
        embeds = merge_image_embeddings(dec.embed(torch.tensor(ids)), torch.tensor(ids), IMAGE, feats)
        pos = mrope_positions(ids, IMAGE, grids, 2)
        greedy = generate_ids(dec, embeds, pos.ids, pos.rope_delta, 12)
        ours = continuation_logits(dec, embeds, pos.ids, pos.rope_delta, greedy)
        full = torch.tensor([ids + greedy[:-1]])
        ref = hf(input_ids=full, pixel_values=pixels, image_grid_thw=grid,
                 mm_token_type_ids=(full == IMAGE).int()).logits[0, len(ids) - 1:]
    assert ours.shape == ref.shape == (12, ref.shape[-1])
    assert (ours - ref).abs().max().item() < TOL
    assert ours.argmax(-1).tolist() == greedy


def test_chunked_prefill_equals_one_shot(hf_tiny):
    """Prefill in two chunks through the cache gives the same logits as one pass."""
    _, path = hf_tiny
    dec = GlmDecoder.from_pretrained(path)
    ids = torch.tensor(_prompt([]))
    pos = mrope_positions(ids, IMAGE).ids
    with torch.no_grad():
        full = dec.logits(dec(dec.embed(ids), pos, dec.new_cache(len(ids))))
        kv = dec.new_cache(len(ids))
        a = dec.logits(dec(dec.embed(ids[:6]), pos[:, :6], kv))
        b = dec.logits(dec(dec.embed(ids[6:]), pos[:, 6:], kv))
    assert torch.allclose(torch.cat([a, b]), full, atol=1e-5)


def test_bf16_close_to_fp32(hf_tiny):
    _, path = hf_tiny
    ids = torch.tensor(_prompt([]))
    pos = mrope_positions(ids, IMAGE).ids
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        dec = GlmDecoder.from_pretrained(path, dtype=dtype)
        with torch.no_grad():
            out[dtype] = dec.logits(dec(dec.embed(ids), pos, dec.new_cache(len(ids)))).float()
    assert out[torch.bfloat16].dtype == torch.float32
    rel = (out[torch.bfloat16] - out[torch.float32]).norm() / out[torch.float32].norm()
    assert rel < 0.05


def test_end_to_end_with_project_vision_tower(hf_tiny):
    """Pixels -> the project's VisionTower -> fusion -> decoder, against transformers."""
    from perception.vision.model import VisionTower
    hf, path = hf_tiny
    grids = [(1, 4, 8), (1, 6, 2)]
    ids = _prompt(grids)
    pixels, grid, _ = _image_features(hf, grids)
    tower = VisionTower.from_pretrained(path)
    with torch.no_grad():
        feats = tower(pixels, grids)
    ours, _ = _ours(GlmDecoder.from_pretrained(path), ids, grids, feats)
    err = (ours - _reference(hf, ids, pixels, grid)).abs().max().item()
    assert err < TOL, f"max abs logit difference {err}"
