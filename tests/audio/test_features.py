"""Resampling and Whisper log-mel features against transformers' WhisperFeatureExtractor."""
from __future__ import annotations

import numpy as np
import pytest

from perception.audio.mel import WINDOW_FRAMES, log_mel_spectrogram, mel_filters
from perception.audio.resample import StreamingResampler, resample

from .conftest import speechlike


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_keeps_a_sines_frequency_and_level(rate):
    t = np.arange(rate * 2) / rate
    x = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    y = resample(x, rate, 16000)
    assert y.dtype == np.float32 and abs(y.size - 32000) <= 1
    assert abs(_dominant_hz(y, 16000) - 1000.0) < 1.0
    mid = y[4000:-4000]
    assert abs(np.sqrt(np.mean(mid ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_resampler_removes_content_above_the_new_nyquist():
    rate = 48000
    t = np.arange(rate) / rate
    y = resample(np.sin(2 * np.pi * 11000.0 * t).astype(np.float32), rate, 16000)
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 1e-3    # 11 kHz cannot exist at 16 kHz: filtered, not aliased


def test_streaming_resampler_matches_one_shot():
    x = speechlike(3.0, 44100)
    stream = StreamingResampler(44100)
    pieces = [stream.push(x[i:i + 7000]) for i in range(0, x.size, 7000)] + [stream.flush()]
    streamed = np.concatenate(pieces)
    whole = resample(x, 44100, 16000)
    n = min(streamed.size, whole.size)
    assert abs(streamed.size - whole.size) <= 2
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(rate, n_mels):
    from transformers import WhisperFeatureExtractor

    pcm16k = resample(speechlike(7.3, rate, seed=rate), rate, 16000)
    ref = WhisperFeatureExtractor(feature_size=n_mels)(
        pcm16k, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = log_mel_spectrogram(pcm16k, n_mels)
    assert ours.shape == ref.shape == (n_mels, WINDOW_FRAMES)
    np.testing.assert_allclose(ours, ref, atol=5e-5)
    assert ours.std() > 0.1


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank
    for n in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(mel_filters(n), ref, rtol=1e-6, atol=1e-10)


def test_silence_gives_a_finite_constant_spectrogram():
    mel = log_mel_spectrogram(np.zeros(16000, np.float32))
    assert np.isfinite(mel).all() and np.ptp(mel) == 0.0
