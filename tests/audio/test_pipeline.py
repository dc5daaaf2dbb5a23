"""AudioPipeline end to end: embed and transcribe modes, windows, streaming, the default checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from perception.audio import AudioModelError, AudioPipeline, write_default_audio_checkpoint
from perception.audio.resample import resample

from .conftest import DECODER_HIDDEN, speechlike


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    write_default_audio_checkpoint(root, decoder_hidden=128, seed=0)
    return root


def test_default_checkpoint_is_small_and_loads_in_transformers(default_dir):
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    audio = default_dir / "audio"
    size = sum(p.stat().st_size for p in audio.rglob("*") if p.is_file())
    assert size < 3_000_000
    model, info = WhisperForConditionalGeneration.from_pretrained(audio, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.d_model == 64 and model.config.num_mel_bins == 80
    tok = Tokenizer.from_file(str(audio / "tokenizer.json"))
    assert tok.decode(tok.encode("héllo, 世界").ids) == "héllo, 世界"
    assert json.loads((audio / "adapter_config.json").read_text())["decoder_hidden"] == 128


def test_default_checkpoint_runs_both_modes(default_dir):
    pcm = speechlike(5.0, 48000)
    emb = AudioPipeline.from_dir(default_dir, mode="embed").process(pcm, 48000)
    assert emb.embeddings.shape == (63, 128) and emb.embeddings.dtype == np.float32
    assert np.isfinite(emb.embeddings).all() and emb.text is None
    text = AudioPipeline.from_dir(default_dir, mode="transcribe").process(pcm, 48000)
    assert isinstance(text.text, str) and text.embeddings is None and len(text.windows[0].token_ids) > 0


def test_embed_token_counts_follow_duration(whisper_dir):
    pipe = AudioPipeline.from_dir(whisper_dir, mode="embed")
    for seconds, expected in [(0.05, 1), (1.0, 13), (5.0, 63), (30.0, 375)]:
        res = pipe.process(speechlike(seconds, 16000), 16000)
        assert res.embeddings.shape == (expected, DECODER_HIDDEN), seconds
        assert pipe.tokens_for_samples(int(seconds * 16000)) == expected


def test_embeddings_are_the_adapter_applied_to_encoder_states(whisper_dir):
    from safetensors.numpy import load_file
    pipe = AudioPipeline.from_dir(whisper_dir, mode="embed")
    pcm = speechlike(2.0, 16000)
    res = pipe.process(pcm, 16000)
    from perception.audio.mel import log_mel_spectrogram
    states = pipe.backend.encode(log_mel_spectrogram(pcm, 80))[:100]
    w = load_file(whisper_dir / "adapter.safetensors")
    pooled = states.reshape(25, 4, 64).mean(1)
    ref = pooled @ w["audio_adapter.down.weight"].T @ w["audio_adapter.up.weight"].T + w["audio_adapter.up.bias"]
    np.testing.assert_allclose(res.embeddings, ref, atol=1e-4)


def test_long_audio_streams_in_30s_windows(whisper_dir):
    pipe = AudioPipeline.from_dir(whisper_dir, mode="transcribe", max_seconds=120)
    rate = 8000
    pcm = speechlike(65.0, rate, seed=4)
    stream = pipe.stream(rate)
    seen = []
    for i in range(0, pcm.size, rate * 4):               # 4 s chunks, as a client would send
        done = stream.feed(pcm[i:i + rate * 4])
        seen.append(len(done))
    tail = stream.finish()
    res = stream.result()
    assert [w.index for w in res.windows] == [0, 1, 2]
    assert sum(seen) == 2 and len(tail) == 1          # two full windows while feeding, the rest at the end
    assert seen.index(1) == 7                          # window 0 ready once 32 s had arrived
    assert [round(w.start_s) for w in res.windows] == [0, 30, 60]
    assert abs(res.duration_s - 65.0) < 0.01
    # The whole clip at once gives the same windows as the stream.
    whole = pipe.process(pcm, rate)
    assert [w.token_ids for w in whole.windows] == [w.token_ids for w in res.windows]
    assert whole.text == "".join(w.text for w in whole.windows).strip()
    # And each window is what its own 16 kHz slice gives on its own.
    pcm16 = resample(pcm, rate, 16000)
    alone = pipe.process(pcm16[480000:960000], 16000).windows[0].token_ids
    assert alone == res.windows[1].token_ids


def test_iter_windows_yields_embeddings_per_window(whisper_dir):
    pipe = AudioPipeline.from_dir(whisper_dir, mode="embed", max_seconds=60)
    pcm = speechlike(40.0, 16000)
    wins = list(pipe.iter_windows((pcm[i:i + 16000] for i in range(0, pcm.size, 16000)), 16000))
    assert [len(w.embeddings) for w in wins] == [375, 125]


def test_trimmed_last_window_encodes_only_the_audio(whisper_dir):
    full = AudioPipeline.from_dir(whisper_dir, mode="embed")
    trim = AudioPipeline.from_dir(whisper_dir, mode="embed", trim_last_window=True)
    shapes = []
    encode = trim.backend.encode
    trim.backend.encode = lambda mel: (shapes.append(mel.shape), encode(mel))[1]
    pcm = speechlike(3.0, 16000)
    a, b = full.process(pcm, 16000).embeddings, trim.process(pcm, 16000).embeddings
    assert shapes == [(80, 300)]
    assert a.shape == b.shape == (38, DECODER_HIDDEN)
    # Whisper was trained on padded 30 s windows: trimming changes the states (opt-in trade).
    assert not np.allclose(a, b)


def test_bad_configuration_is_reported(whisper_dir, tmp_path):
    with pytest.raises(AudioModelError, match="mode must be"):
        AudioPipeline.from_dir(whisper_dir, mode="speak")
    with pytest.raises(AudioModelError, match="onnx"):
        AudioPipeline.from_dir(whisper_dir, quantize_int8=True)
    with pytest.raises(AudioModelError, match="no audio/ subdirectory"):
        AudioPipeline.from_dir(tmp_path)
    with pytest.raises(AudioModelError, match="language 'fr'"):
        AudioPipeline.from_dir(whisper_dir, mode="transcribe", language="fr")
    bare = tmp_path / "bare" / "audio"
    bare.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((whisper_dir / name).read_bytes())
    with pytest.raises(AudioModelError, match="adapter_config.json: missing"):
        AudioPipeline.from_dir(bare.parent, mode="embed")
    with pytest.raises(AudioModelError, match="tokenizer.json: missing"):
        AudioPipeline.from_dir(bare.parent, mode="transcribe")
