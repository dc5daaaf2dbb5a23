"""Decoding request bytes and rejecting audio we cannot use, with AudioInputError."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from perception.audio import AudioInputError, AudioPipeline, decode_audio, prepare_pcm

from .conftest import speechlike


def _encode(pcm, rate, fmt, subtype=None):
    buf = io.BytesIO()
    soundfile.write(buf, pcm, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "FLOAT"), ("OGG", "VORBIS")])
def test_decode_audio_formats_stereo_to_mono(fmt, subtype):
    left = speechlike(1.0, 22050)
    stereo = np.stack([left, 0.5 * left], axis=1)
    pcm, rate = decode_audio(_encode(stereo, 22050, fmt, subtype))
    assert rate == 22050 and pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(pcm.size - left.size) <= (0 if fmt != "OGG" else 2048)
    if fmt != "OGG":          # lossy Vorbis: only the level is comparable
        np.testing.assert_allclose(pcm, 0.75 * left, atol=2e-4)
    else:
        assert abs(np.std(pcm) - 0.75 * np.std(left)) < 0.02


def test_integer_pcm_is_scaled_to_unit_range():
    pcm = prepare_pcm(np.array([[-32768, 32767], [0, 0]], np.int16), 16000)
    np.testing.assert_allclose(pcm, [-0.5 * (1 - 32767 / 32768), 0.0], atol=1e-6)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"this is not audio at all, just some text bytes" * 10, "could not decode"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "could not decode"),
])
def test_undecodable_bytes_are_rejected(data, message):
    with pytest.raises(AudioInputError, match=message):
        decode_audio(data)


def test_out_of_range_sample_rate_is_rejected():
    with pytest.raises(AudioInputError, match="outside the supported 8000-48000"):
        decode_audio(_encode(speechlike(0.5, 96000), 96000, "WAV"))
    with pytest.raises(AudioInputError, match="outside"):
        prepare_pcm(np.zeros(100, np.float32), 4000)


def test_wav_with_no_frames_is_rejected():
    with pytest.raises(AudioInputError, match="empty"):
        decode_audio(_encode(np.zeros((0, 1), np.float32), 16000, "WAV"))


def test_overlong_audio_is_rejected_before_decoding_it_all():
    data = _encode(np.zeros(16000 * 5, np.int16), 16000, "WAV", "PCM_16")
    with pytest.raises(AudioInputError, match="5.0 s long; the limit is 4 s"):
        decode_audio(data, max_seconds=4)


@pytest.fixture(scope="module")
def embed_pipe(whisper_dir):
    return AudioPipeline.from_dir(whisper_dir, mode="embed", backend="torch", max_seconds=40)


@pytest.mark.parametrize("pcm,rate,message", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.full(1600, np.nan, np.float32), 16000, "1600 non-finite"),
    (np.array([0.1, np.inf, 0.2] * 100, np.float32), 16000, "100 non-finite"),
    (np.zeros(16000 * 41, np.float32), 16000, "41.0 s long; the limit is 40 s"),
    (np.zeros((10, 2, 2), np.float32), 16000, "shape"),
    (np.array(["a", "b"]), 16000, "numeric"),
    (np.zeros(1000, np.float32), 100_000, "outside"),
    (np.zeros(1000, np.float32), 16000.5, "integer"),
])
def test_pipeline_rejects_bad_pcm(embed_pipe, pcm, rate, message):
    with pytest.raises(AudioInputError, match=message):
        embed_pipe.process(pcm, rate)


def test_stream_rejects_nan_chunks_and_overlong_streams(embed_pipe):
    stream = embed_pipe.stream(8000)
    stream.feed(np.zeros(8000, np.float32))
    with pytest.raises(AudioInputError, match="non-finite"):
        stream.feed(np.array([np.nan], np.float32))
    stream = embed_pipe.stream(8000)
    with pytest.raises(AudioInputError, match="limit"):
        for _ in range(41):
            stream.feed(np.zeros(8000, np.float32))
    with pytest.raises(AudioInputError, match="empty"):
        embed_pipe.stream(16000).finish()


def test_error_is_a_value_error_for_generic_handlers():
    assert issubclass(AudioInputError, ValueError)


def test_importing_the_package_does_not_import_torch():
    """The gateway imports decode_audio from here; it must not pay for torch."""
    import subprocess
    import sys
    code = "import sys, perception.audio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
