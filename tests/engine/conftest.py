"""Small random GLM-4.1V checkpoints saved by transformers, loaded through the project's decoder."""
from __future__ import annotations

import pytest
import torch

IMAGE_TOKEN = 500


def tiny_config():
    from transformers import Glm4vConfig
    return Glm4vConfig(
        text_config=dict(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                              mrope_section=[2, 3, 3], partial_rotary_factor=0.5)),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2,
                           out_hidden_size=128, patch_size=14, image_size=28,
                           initializer_range=0.2),
        image_token_id=IMAGE_TOKEN, video_token_id=501, image_start_token_id=502,
        image_end_token_id=503, video_start_token_id=504, video_end_token_id=505)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """(model_dir, transformers model) for a tiny random checkpoint."""
    from transformers import Glm4vForConditionalGeneration
    torch.manual_seed(1234)
    hf = Glm4vForConditionalGeneration(tiny_config()).eval()
    model_dir = tmp_path_factory.mktemp("glm4v-tiny")
    hf.save_pretrained(model_dir)
    return model_dir, hf


@pytest.fixture(scope="session")
def decoder(checkpoint):
    from decision.decoder import GlmDecoder
    return GlmDecoder.from_pretrained(checkpoint[0], dtype=torch.float32)


def make_engine(decoder, **overrides):
    from decision.engine import EngineConfig, LLMEngine
    cfg = dict(block_size=4, num_blocks=128, max_num_batched_tokens=64, max_num_seqs=16)
    cfg.update(overrides)
    return LLMEngine(decoder, EngineConfig(**cfg))


def run_to_end(engine, max_steps=2000):
    """Step until every request finished; {request_id: (token ids, finish reason)}."""
    out: dict[str, list[int]] = {}
    reasons = {}
    for _ in range(max_steps):
        for rec in engine.step():
            if rec.token_id >= 0:
                out.setdefault(rec.request_id, []).append(rec.token_id)
            if rec.finished:
                reasons[rec.request_id] = rec.finish_reason
                out.setdefault(rec.request_id, [])
        if not engine.has_unfinished():
            return out, reasons
    raise AssertionError("engine did not finish")


def hf_greedy(hf, prompt, n, **kwargs):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          **kwargs)
    return out[0, len(prompt):].tolist()
