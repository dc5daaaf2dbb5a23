"""Resampling to Whisper's 16 kHz with libsoxr (the `soxr` package).

soxr's HQ mode is a linear-phase polyphase filter with >100 dB stop-band: good enough that
the log-mel of a resampled clip is indistinguishable from one recorded at 16 kHz. The stream
variant keeps filter state between chunks so windows that arrive piecewise resample exactly
like the whole clip would, apart from the filter delay it absorbs at the start.
"""
from __future__ import annotations

import numpy as np

TARGET_RATE = 16_000


def resample(pcm: np.ndarray, in_rate: int, out_rate: int = TARGET_RATE) -> np.ndarray:
    """Mono float32 PCM at `in_rate` -> float32 at `out_rate` (a no-op when equal)."""
    if in_rate == out_rate:
        return np.ascontiguousarray(pcm, dtype=np.float32)
    import soxr
    return np.ascontiguousarray(soxr.resample(pcm, in_rate, out_rate, quality="HQ"), dtype=np.float32)


class StreamingResampler:
    """Incremental resampler: push chunks, get resampled chunks; `flush()` at the end."""

    def __init__(self, in_rate: int, out_rate: int = TARGET_RATE):
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = None
        if in_rate != out_rate:
            import soxr
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def push(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
