"""Shared fixtures: small random Whisper checkpoints written by transformers itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.audio.config import AdapterConfig
from perception.audio.config import WhisperConfig as OurConfig
from perception.audio.writer import build_byte_tokenizer, generation_config_for, random_whisper_tensors, write_adapter

DECODER_HIDDEN = 96


def hf_whisper_dir(root, num_mel_bins=80, seed=0, language="en", max_length=40):
    """save_pretrained of a random WhisperForConditionalGeneration + our byte tokenizer."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    tok = build_byte_tokenizer()
    sot, eot = tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|endoftext|>")
    hf_cfg = WhisperConfig(
        vocab_size=tok.get_vocab_size(), num_mel_bins=num_mel_bins, d_model=64,
        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=64,
        decoder_start_token_id=sot, eos_token_id=eot, bos_token_id=eot, pad_token_id=eot)
    model = WhisperForConditionalGeneration(hf_cfg).eval()
    # HF's init (std 0.02) gives near-flat logits where argmax ties are float noise; load
    # larger random weights, by HF name, so greedy choices have real margins.
    ours = OurConfig.from_dict(hf_cfg.to_dict())
    missing, unexpected = model.load_state_dict(random_whisper_tensors(ours, seed), strict=False)
    assert not unexpected and set(missing) <= {"proj_out.weight"}
    gen = generation_config_for(tok, ours, language=language, max_length=max_length)
    gen["suppress_tokens"] = [tok.token_to_id("<|nocaptions|>"), 0]
    model.generation_config = GenerationConfig(**gen)
    path = root / f"whisper-{num_mel_bins}-{seed}-{language}"
    model.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    write_adapter(path, AdapterConfig(encoder_d_model=64, rank=8, decoder_hidden=DECODER_HIDDEN, pooling=4))
    return path


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory):
    return hf_whisper_dir(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def hf_model(whisper_dir):
    from transformers import WhisperForConditionalGeneration
    return WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()


def speechlike(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Deterministic voiced-sound stand-in: a gliding harmonic tone with noise and a fade."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t)) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)    # the CI box has 2 shared cores
    yield
