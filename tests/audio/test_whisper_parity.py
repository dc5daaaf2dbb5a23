"""Our Whisper encoder/decoder/greedy decoding against transformers' own implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.audio import AudioPipeline
from perception.audio.mel import log_mel_spectrogram

from .conftest import hf_whisper_dir, speechlike


def _features(pcm16k, n_mels=80):
    return torch.from_numpy(log_mel_spectrogram(pcm16k, n_mels))[None]


def test_encoder_states_match_transformers(whisper_dir, hf_model):
    pipe = AudioPipeline.from_dir(whisper_dir, mode="embed", backend="torch")
    mel = log_mel_spectrogram(speechlike(4.0, 16000), 80)
    ours = pipe.backend.encode(mel)
    with torch.no_grad():
        ref = hf_model.model.encoder(torch.from_numpy(mel)[None]).last_hidden_state[0].numpy()
    assert ours.shape == ref.shape == (1500, 64)
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_decoder_logits_match_transformers(whisper_dir, hf_model):
    pipe = AudioPipeline.from_dir(whisper_dir, mode="transcribe", backend="torch")
    feats = _features(speechlike(3.0, 16000, seed=1))
    ids = [pipe.generation.decoder_start_token_id, 258, 261, 265, 72, 101, 108, 108, 111]
    states = pipe.backend.encode(feats[0].numpy())
    session = pipe.backend.decoder_session(states)
    # Whole prefix at once, then token by token through the KV cache: both must match HF.
    first = session.start(ids[:4])
    stepped = [session.step(t) for t in ids[4:]]
    with torch.no_grad():
        ref = hf_model(input_features=feats, decoder_input_ids=torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(first, ref[3], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(np.stack(stepped), ref[4:], atol=2e-4, rtol=1e-4)
    assert np.abs(ref).max() > 1.0           # not trivially flat logits


def _hf_generated(hf_model, feats, **kw):
    with torch.no_grad():
        out = hf_model.generate(feats, **kw)
    seq = out.sequences if hasattr(out, "sequences") else out
    return [int(t) for t in seq[0]]


@pytest.mark.parametrize("language", ["en", "zh", None])
def test_greedy_tokens_match_transformers_generate(whisper_dir, hf_model, language):
    pcm = speechlike(6.0, 16000, seed=2)
    pipe = AudioPipeline.from_dir(whisper_dir, mode="transcribe", backend="torch", language=language)
    if language is None:                      # exercise language detection, as HF does
        pipe.generation = type(pipe.generation)(**{**pipe.generation.__dict__, "language": None})
    result = pipe.process(pcm, 16000)
    ours = result.windows[0].token_ids
    kw = {"language": language} if language else {}
    if language is None:
        hf_model.generation_config.language = None
    try:
        ref = _hf_generated(hf_model, _features(pcm), **kw)
    finally:
        hf_model.generation_config.language = "en"
    # generate() returns the generated tokens only (prompt stripped), <|endoftext|> kept.
    eot = pipe.generation.eos_token_id
    assert ours == [t for t in ref if t != eot]
    assert len(ours) > 5
    assert result.text == pipe.tokenizer.decode(ours, skip_special_tokens=True).strip()


def test_128_mel_bins_checkpoint(tmp_path):
    from transformers import WhisperForConditionalGeneration
    path = hf_whisper_dir(tmp_path, num_mel_bins=128, seed=3)
    hf = WhisperForConditionalGeneration.from_pretrained(path).eval()
    pcm = speechlike(2.0, 16000, seed=3)
    pipe = AudioPipeline.from_dir(path, mode="transcribe", backend="torch")
    assert pipe.n_mels == 128
    ours = pipe.process(pcm, 16000).windows[0].token_ids
    ref = _hf_generated(hf, _features(pcm, 128))
    assert ours == [t for t in ref if t != pipe.generation.eos_token_id] and len(ours) > 5


def test_legacy_forced_decoder_ids_prompt_matches_transformers(tmp_path):
    """Released Whisper checkpoints carry forced_decoder_ids [[1, null], [2, <|transcribe|>]]
    and no language/task keys: language is detected, the task is forced."""
    import json

    from transformers import WhisperForConditionalGeneration
    path = hf_whisper_dir(tmp_path, seed=7, language=None)
    gen_path = path / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen.pop("task", None)
    gen.pop("language", None)
    gen["forced_decoder_ids"] = [[1, None], [2, gen["task_to_id"]["transcribe"]]]
    gen_path.write_text(json.dumps(gen))
    hf = WhisperForConditionalGeneration.from_pretrained(path).eval()
    pcm = speechlike(3.0, 16000, seed=7)
    pipe = AudioPipeline.from_dir(path, mode="transcribe")
    session = pipe.backend.decoder_session(pipe.backend.encode(log_mel_spectrogram(pcm, 80)))
    from perception.audio.generate import initial_tokens
    prompt = initial_tokens(pipe.generation, None, None, session.start)
    assert prompt[0] == 257 and prompt[1] in (258, 259) and prompt[2:] == [261, 265]
    ours = pipe.process(pcm, 16000).windows[0].token_ids
    ref = _hf_generated(hf, _features(pcm))
    assert ours == [t for t in ref if t != pipe.generation.eos_token_id] and len(ours) > 5
