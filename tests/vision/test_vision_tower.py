"""VisionTower against transformers' Glm4v vision model on a small random checkpoint that
transformers itself saves (sharded, with an index)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Glm4vConfig, Glm4vForConditionalGeneration

from modelcore.checkpoint import CheckpointError, CheckpointReader, save_checkpoint
from perception.vision.model import VisionTower
from perception.vision.processor import ImageProcessor

VISION = {"depth": 2, "hidden_size": 64, "num_heads": 2, "out_hidden_size": 64,
          "intermediate_size": 96}
TEXT = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                            "mrope_section": [2, 3, 3], "partial_rotary_factor": 0.5}}


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration(
        Glm4vConfig(text_config=TEXT, vision_config=VISION)).eval()
    # transformers initialises norms to 1 and biases to 0; randomise every vision tensor so
    # a tensor loaded into the wrong place, or a norm weight ignored, shows up.
    with torch.no_grad():
        for name, p in model.model.visual.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and "weight" in name else 0.0))
    return model


@pytest.fixture(scope="module")
def model_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("glm4v_small")
    hf_model.save_pretrained(path, max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="module")
def tower(model_dir):
    return VisionTower.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    proc = ImageProcessor(max_pixels=150_000)
    wide = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    x = np.linspace(0, 255, 110)
    y = np.linspace(0, 255, 700)
    tall = Image.fromarray(np.stack(np.broadcast_arrays(x[None, :], y[:, None],
                                                        (x[None, :] + y[:, None]) / 2),
                                    axis=2).astype(np.uint8))
    return [proc.preprocess(wide), proc.preprocess(tall)]


def reference_features(hf_model, images):
    pixels = torch.from_numpy(np.concatenate([im.pixel_values for im in images]))
    grid = torch.tensor([im.grid_thw for im in images])
    with torch.no_grad():
        return list(hf_model.model.get_image_features(pixels, grid).pooler_output)


def assert_close(got, want):
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 0.1  # the comparison means something
    assert (got - want).abs().max().item() < 1e-4 * max(1.0, scale)


def test_one_image_matches_transformers(tower, hf_model, images):
    assert images[0].grid_thw != images[1].grid_thw
    (got,) = tower.encode(images[:1])
    (want,) = reference_features(hf_model, images[:1])
    assert got.shape == (images[0].num_tokens, VISION["out_hidden_size"])
    assert_close(got, want)


def test_two_images_in_one_call_match_transformers(tower, hf_model, images):
    got = tower.encode(images)
    want = reference_features(hf_model, images)
    assert [g.shape[0] for g in got] == [im.num_tokens for im in images]
    for g, w in zip(got, want):
        assert_close(g, w)
    # Attention stays inside each image: batching changes nothing.
    (alone,) = tower.encode(images[1:])
    torch.testing.assert_close(got[1], alone, rtol=1e-5, atol=1e-5)


def test_forward_concatenates_images(tower, images):
    pixels = torch.from_numpy(np.concatenate([im.pixel_values for im in images]))
    with torch.inference_mode():
        out = tower(pixels, [im.grid_thw for im in images])
    assert out.shape == (sum(im.num_tokens for im in images), VISION["out_hidden_size"])


def test_reads_only_vision_tensors(model_dir, hf_model, images, tmp_path):
    visual = {k: v for k, v in CheckpointReader(model_dir).read_prefix("").items()
              if k.startswith("model.visual.")}
    save_checkpoint(visual, tmp_path)  # a checkpoint holding nothing but the vision tower
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    (got,) = VisionTower.from_pretrained(tmp_path).encode(images[:1])
    assert_close(got, reference_features(hf_model, images[:1])[0])


def test_bf16_tracks_fp32(model_dir, tower, images):
    bf16 = VisionTower.from_pretrained(model_dir, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    (low,) = bf16.encode(images[:1])
    (full,) = tower.encode(images[:1])
    assert low.dtype == torch.bfloat16
    rel = (low.float() - full).norm() / full.norm()
    assert rel < 0.05


def edited_checkpoint(model_dir, tmp_path, **vision_changes):
    for f in model_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vision_config"].update(vision_changes)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_config_with_fewer_blocks_than_weights_is_refused(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="blocks.1"):
        VisionTower.from_pretrained(edited_checkpoint(model_dir, tmp_path, depth=1))


def test_config_with_other_widths_is_refused(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="shape"):
        VisionTower.from_pretrained(edited_checkpoint(model_dir, tmp_path, out_hidden_size=96))


def test_bad_inputs_are_named(tower, images):
    pixels = torch.from_numpy(images[0].pixel_values)
    with pytest.raises(ValueError, match="describes"):
        tower(pixels, [(1, 4, 4)])
    with pytest.raises(ValueError, match=r"\[n_patches, 1176\]"):
        tower(pixels[:, :588], [images[0].grid_thw])
    with pytest.raises(ValueError, match="multiples of 2"):
        tower(pixels, [(1, 7, pixels.shape[0] // 7)])


def test_forward_into_a_loaned_shm_slot_equals_the_plain_forward(tower, hf_model, images):
    """The vision stage's write path: the merger's last matmul writes straight into a slot
    (WriteLoan.tensor); what the consumer reads is the tower's output, bit for bit."""
    import os
    import uuid

    from shm import Instance

    pixels = torch.from_numpy(images[0].pixel_values)
    grid = images[0].grid_thw
    with torch.inference_mode():
        plain = tower(pixels, [grid])
    inst = Instance.create(f"t-vis-out-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                           handle_signals=False)
    try:
        pool = inst.create_pool("embeddings", 1 << 20, 2)
        loan = pool.acquire(timeout=1.0)
        dst = loan.tensor((tower.num_tokens(grid), VISION["out_hidden_size"]), torch.float32)
        with torch.inference_mode():
            got = tower(pixels, [grid], out=dst)
        assert got.data_ptr() == dst.data_ptr()            # no copy after the tower
        ref = loan.commit(readers=1)
        with pool.view(ref) as arr:
            read = torch.from_numpy(np.array(arr))
        assert torch.equal(read, plain)
        assert_close(read, reference_features(hf_model, images[:1])[0])
        assert pool.free_slots() == 2
    finally:
        inst.close()
