"""Whisper's log-mel spectrogram, in NumPy (no torch needed on the ONNX path).

Definition (OpenAI Whisper / transformers' WhisperFeatureExtractor): 16 kHz audio padded with
zeros to the window length, centred STFT (reflect padding n_fft/2) with a periodic Hann window
of 400 samples and hop 160, power spectrum, Slaney-normalised mel filters over 0-8 kHz, log10
floored at 1e-10, the last frame dropped, everything clamped to (max - 8), then (x + 4) / 4.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE          # 480 000
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH           # 3 000 mel frames -> 1 500 encoder frames


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    # Linear below 1 kHz, logarithmic above (Slaney's Auditory Toolbox, as librosa does).
    hz = np.asarray(hz, np.float64)
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mel = np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), mel)
    return mel


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    return np.where(log_region, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular filters, area-normalised (Slaney)."""
    fft_freqs = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    edges = _mel_to_hz_slaney(mel_points)
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= 2.0 / (edges[2:n_mels + 2] - edges[:n_mels])
    bank.setflags(write=False)
    return bank


@lru_cache(maxsize=1)
def _hann(n: int) -> np.ndarray:
    # Periodic Hann (as torch.hann_window), not numpy's symmetric np.hanning.
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.setflags(write=False)
    return w


def log_mel_spectrogram(pcm16k: np.ndarray, n_mels: int = 80,
                        n_frames: int = WINDOW_FRAMES) -> np.ndarray:
    """Mono 16 kHz float PCM (at most one window) -> [n_mels, n_frames] float32 log-mel.

    The audio is zero-padded to n_frames * hop samples, as Whisper pads every window to 30 s.
    """
    pcm = np.asarray(pcm16k, np.float64)
    n_samples = n_frames * HOP_LENGTH
    if pcm.size > n_samples:
        raise ValueError(f"{pcm.size} samples do not fit {n_frames} frames")
    padded = np.zeros(n_samples, np.float64)
    padded[:pcm.size] = pcm
    half = N_FFT // 2
    padded = np.pad(padded, half, mode="reflect")
    # n_frames + 1 centred frames; the last one is dropped below, as Whisper does.
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    spectrum = np.fft.rfft(frames * _hann(N_FFT), axis=-1)
    power = spectrum.real ** 2 + spectrum.imag ** 2              # [n_frames, n_fft/2 + 1]
    mel = power @ mel_filters(n_mels)                             # [n_frames, n_mels]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.astype(np.float32)


def valid_mel_frames(n_samples: int) -> int:
    """Mel frames that cover real audio (the rest of a window is padding)."""
    return min(WINDOW_FRAMES, -(-n_samples // HOP_LENGTH))
