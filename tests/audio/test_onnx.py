"""The ONNX Runtime backend against the torch one: fp32 tight, int8 within a measured bound."""
from __future__ import annotations

import numpy as np
import pytest

from perception.audio import AudioPipeline
from perception.audio.mel import log_mel_spectrogram

from .conftest import speechlike


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def pipes(whisper_dir, cache):
    def make(backend, int8=False):
        return AudioPipeline.from_dir(whisper_dir, mode="transcribe", backend=backend, quantize_int8=int8,
                                      cache_dir=cache, threads=1)
    return {"torch": make("torch"), "onnx": make("onnx"), "int8": make("onnx", True)}


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_cpu_provider_is_used_here(pipes):
    assert pipes["onnx"].providers == ["CPUExecutionProvider"]


def test_onnx_encoder_and_logits_match_torch(pipes):
    mel = log_mel_spectrogram(speechlike(4.0, 16000, seed=5), 80)
    ref_states = pipes["torch"].backend.encode(mel)
    states = pipes["onnx"].backend.encode(mel)
    np.testing.assert_allclose(states, ref_states, atol=1e-4, rtol=1e-4)
    ids = [257, 258, 261, 265, 40, 41, 42]
    ref_sess, sess = pipes["torch"].backend.decoder_session(ref_states), pipes["onnx"].backend.decoder_session(states)
    ref = [ref_sess.start(ids[:4])] + [ref_sess.step(t) for t in ids[4:]]
    got = [sess.start(ids[:4])] + [sess.step(t) for t in ids[4:]]
    np.testing.assert_allclose(np.stack(got), np.stack(ref), atol=2e-4, rtol=1e-4)


def test_onnx_encoder_accepts_a_trimmed_window(pipes):
    mel = log_mel_spectrogram(speechlike(2.0, 16000), 80, n_frames=200)
    np.testing.assert_allclose(pipes["onnx"].backend.encode(mel), pipes["torch"].backend.encode(mel), atol=1e-4)


def test_onnx_greedy_transcription_matches_torch(pipes):
    pcm = speechlike(6.0, 16000, seed=2)
    assert pipes["onnx"].process(pcm, 16000).windows[0].token_ids == \
        pipes["torch"].process(pcm, 16000).windows[0].token_ids


# Measured on this model (2026-11, onnxruntime 1.31.1, CPU): encoder relative error ~1e-2,
# first-step logits ~2e-2. The bounds leave ~3x headroom; a broken quantisation gives ~1.
INT8_STATES_REL_ERR = 0.05
INT8_LOGITS_REL_ERR = 0.08


def test_int8_is_close_to_fp32_within_the_measured_bound(pipes):
    mel = log_mel_spectrogram(speechlike(4.0, 16000, seed=6), 80)
    ref_states, q_states = pipes["torch"].backend.encode(mel), pipes["int8"].backend.encode(mel)
    states_err = _rel_err(q_states, ref_states)
    ids = [257, 258, 261, 265]
    ref = pipes["torch"].backend.decoder_session(ref_states).start(ids)
    got = pipes["int8"].backend.decoder_session(q_states).start(ids)
    logits_err = _rel_err(got, ref)
    print(f"int8 relative error: states {states_err:.4f}, logits {logits_err:.4f}")
    assert 0 < states_err < INT8_STATES_REL_ERR
    assert 0 < logits_err < INT8_LOGITS_REL_ERR
    assert all(p.name.endswith(".int8.onnx") for p in pipes["int8"].backend.paths.values())


def test_export_is_cached_and_reused(whisper_dir, cache, pipes):
    paths = pipes["onnx"].backend.paths
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = AudioPipeline.from_dir(whisper_dir, mode="transcribe", backend="onnx", cache_dir=cache)
    assert {k: p.stat().st_mtime_ns for k, p in again.backend.paths.items()} == mtimes
    assert paths["encoder"].parent.parent == cache


def test_read_only_checkpoint_exports_to_the_cache_dir(whisper_dir, tmp_path, monkeypatch):
    from perception.audio import onnx_backend

    # Tests run as root here, which writes through chmod 0555; stand in for a read-only mount.
    monkeypatch.setattr(onnx_backend, "_is_writable", lambda d: d != whisper_dir)
    monkeypatch.setenv("AUTOGLM_CACHE_DIR", str(tmp_path / "cache"))
    pipe = AudioPipeline.from_dir(whisper_dir, mode="embed", backend="onnx")
    assert pipe.backend.paths["encoder"].is_relative_to(tmp_path / "cache" / "audio-onnx")
    assert pipe.backend.paths["encoder"].is_file()
    assert not (whisper_dir / "onnx").exists()


def test_writable_probe_is_real(tmp_path):
    from perception.audio.onnx_backend import _is_writable
    assert _is_writable(tmp_path)
    assert not _is_writable(tmp_path / "does-not-exist")
