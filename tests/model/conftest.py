"""Small random GLM-4.1V models made and saved by transformers (the reference)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 320
IMAGE, VIDEO, BOI, EOI, BOV, EOV = 300, 301, 302, 303, 304, 305


def tiny_config(**text_overrides):
    from transformers import Glm4vConfig
    text = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,  # head_dim 32, GQA 2:1
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=[2, 3, 3], partial_rotary_factor=0.5))
    text.update(text_overrides)
    return Glm4vConfig(
        text_config=text,
        vision_config=dict(depth=1, hidden_size=32, num_heads=2, out_hidden_size=128,
                           intermediate_size=64, image_size=56, patch_size=14),
        image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=BOI,
        image_end_token_id=EOI, video_start_token_id=BOV, video_end_token_id=EOV)


def _make(tmp_path_factory, name, seed, **save_kwargs):
    from transformers import Glm4vForConditionalGeneration
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(tiny_config()).eval()
    # Random (not zero) biases, so a missing q/k/v bias cannot pass unnoticed.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
            for norm in (layer.input_layernorm, layer.post_attention_layernorm,
                         layer.post_self_attn_layernorm, layer.post_mlp_layernorm):
                norm.weight.normal_(1.0, 0.2)
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out, **save_kwargs)
    return model, out


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    return _make(tmp_path_factory, "hf_tiny", 0)


@pytest.fixture(scope="session")
def hf_tiny_sharded(tmp_path_factory):
    return _make(tmp_path_factory, "hf_tiny_sharded", 1, max_shard_size="300KB")
