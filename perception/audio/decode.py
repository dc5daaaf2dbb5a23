"""Turning request bytes or raw arrays into validated mono float32 PCM.

Everything the gateway receives goes through `decode_audio` (container bytes) or
`prepare_pcm` (an array that is already PCM); both raise `AudioInputError` with a message fit
to return to the client as-is.
"""
from __future__ import annotations

import io

import numpy as np

from .errors import AudioInputError

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
# Ten minutes: twenty 30 s windows. Longer requests tie the stage up for too long and are
# almost certainly a client mistake; deployments may raise it via AudioPipeline(max_seconds=).
DEFAULT_MAX_SECONDS = 600.0


def check_sample_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioInputError(f"sample rate must be an integer, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise AudioInputError(
            f"sample rate {sample_rate} Hz is outside the supported "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz range")
    return int(sample_rate)


def to_mono_float32(pcm: np.ndarray) -> np.ndarray:
    """[n] or [n, channels] (soundfile's layout) of float or integer PCM -> [n] float32 in [-1, 1]."""
    pcm = np.asarray(pcm)
    if pcm.dtype.kind not in "fiu":
        raise AudioInputError(f"PCM must be numeric, got dtype {pcm.dtype}")
    if pcm.ndim not in (1, 2):
        raise AudioInputError(f"PCM must be [samples] or [samples, channels], got shape {pcm.shape}")
    # Scale integers to [-1, 1) before the downmix, which would turn them into floats.
    if pcm.dtype.kind == "i":
        pcm = pcm.astype(np.float64) / float(-np.iinfo(pcm.dtype).min)
    elif pcm.dtype.kind == "u":
        mid = (np.iinfo(pcm.dtype).max + 1) / 2.0
        pcm = (pcm.astype(np.float64) - mid) / mid
    if pcm.ndim == 2:
        # Averaging keeps a centred source at its level; an anti-phase stereo file would cancel,
        # which is what every mono downmix does.
        pcm = pcm.mean(axis=1) if pcm.shape[1] > 1 else pcm[:, 0]
    return np.ascontiguousarray(pcm, dtype=np.float32)


def check_pcm_values(pcm: np.ndarray) -> None:
    """Reject NaN/inf samples, which would silently poison every frame of the log-mel."""
    if not np.isfinite(pcm).all():
        bad = int(np.count_nonzero(~np.isfinite(pcm)))
        raise AudioInputError(f"audio contains {bad} non-finite samples (NaN or infinity)")


def prepare_pcm(pcm: np.ndarray, sample_rate: int,
                max_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Validate a whole clip and return it as mono float32."""
    sample_rate = check_sample_rate(sample_rate)
    mono = to_mono_float32(pcm)
    if mono.size == 0:
        raise AudioInputError("audio is empty (0 samples)")
    check_pcm_values(mono)
    seconds = mono.size / sample_rate
    if seconds > max_seconds:
        raise AudioInputError(
            f"audio is {seconds:.1f} s long; the limit is {max_seconds:.0f} s")
    return mono


def decode_audio(data: bytes, max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Decode a WAV/FLAC/OGG/... file held in memory into (mono float32 PCM, sample rate).

    Any container and codec that libsndfile (through `soundfile`) reads is accepted.
    """
    import soundfile  # imported here: only the gateway and this helper need libsndfile

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioInputError(f"audio must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise AudioInputError("audio is empty (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(bytes(data))) as f:
            rate = int(f.samplerate)
            check_sample_rate(rate)
            if f.frames > 0 and f.frames / rate > max_seconds:
                raise AudioInputError(
                    f"audio is {f.frames / rate:.1f} s long; the limit is {max_seconds:.0f} s")
            pcm = f.read(dtype="float32", always_2d=True)
    except AudioInputError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioInputError(
            f"could not decode audio ({len(data)} bytes): not a format libsndfile reads "
            f"(WAV, FLAC, OGG/Vorbis, MP3, ...): {exc}") from None
    return prepare_pcm(pcm, rate, max_seconds), rate
