"""AudioPipeline: PCM in, decoder-width embeddings (embed mode) or text (transcribe mode) out.

Audio is cut into 30 s windows at 16 kHz as it arrives; each complete window is encoded (and
decoded, in transcribe mode) at once, so the first window's result is ready while the rest
of a long clip is still coming in. Whole clips: `process(pcm, rate)`. Streams:
`stream(rate)` -> `AudioStream.feed(chunk)` / `.finish()`, or `iter_windows(chunks, rate)`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .adapter import NumpyAdapter, read_adapter_weights, token_count
from .config import AdapterConfig, GenerationSettings, WhisperConfig, read_json
from .decode import DEFAULT_MAX_SECONDS, check_pcm_values, check_sample_rate, prepare_pcm, to_mono_float32
from .errors import AudioInputError, AudioModelError
from .generate import greedy_decode, initial_tokens, max_new_tokens
from .mel import SAMPLE_RATE, WINDOW_FRAMES, WINDOW_SAMPLES, log_mel_spectrogram, valid_mel_frames
from .resample import StreamingResampler

MODES = ("embed", "transcribe")
BACKENDS = ("torch", "onnx")
# A final remainder shorter than this (resampler rounding, a click) is not worth a window.
MIN_TAIL_SAMPLES = SAMPLE_RATE // 100


@dataclass
class AudioWindow:
    """The result of one <= 30 s window."""
    index: int
    start_s: float
    duration_s: float
    embeddings: np.ndarray | None = None     # [n_tokens, decoder_hidden] float32 (embed mode)
    token_ids: list[int] | None = None       # generated ids, prompt and <|endoftext|> excluded
    text: str | None = None
    encode_ms: float = 0.0
    decode_ms: float = 0.0


@dataclass
class AudioResult:
    mode: str
    windows: list[AudioWindow] = field(default_factory=list)
    decoder_hidden: int | None = None

    @property
    def duration_s(self) -> float:
        return sum(w.duration_s for w in self.windows)

    @property
    def embeddings(self) -> np.ndarray | None:
        if self.mode != "embed":
            return None
        return np.concatenate([w.embeddings for w in self.windows]) if self.windows \
            else np.zeros((0, self.decoder_hidden or 0), np.float32)

    @property
    def n_tokens(self) -> int:
        return 0 if self.mode != "embed" else sum(len(w.embeddings) for w in self.windows)

    @property
    def text(self) -> str | None:
        if self.mode != "transcribe":
            return None
        return "".join(w.text for w in self.windows).strip()


def resolve_audio_dir(model_dir: str | Path) -> Path:
    """`model_dir/audio/` when present; else `model_dir` itself if it is a Whisper checkpoint."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / "audio", model_dir):
        cfg = candidate / "config.json"
        if cfg.is_file() and read_json(cfg).get("model_type") == "whisper":
            return candidate
    raise AudioModelError(f"{model_dir}: no audio/ subdirectory with a Whisper config.json "
                          f"(model_type 'whisper'), and {model_dir} is not one itself")


class AudioPipeline:
    def __init__(self, audio_dir: Path, mode: str, backend, cfg: WhisperConfig,
                 adapter: NumpyAdapter | None = None, tokenizer=None,
                 generation: GenerationSettings | None = None, language: str | None = None,
                 task: str | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 trim_last_window: bool = False):
        self.audio_dir, self.mode, self.backend, self.cfg = audio_dir, mode, backend, cfg
        self.adapter, self.tokenizer, self.generation = adapter, tokenizer, generation
        self.language, self.task = language, task
        self.max_seconds, self.trim_last_window = float(max_seconds), trim_last_window

    @classmethod
    def from_dir(cls, model_dir: str | Path, mode: str = "embed", backend: str = "torch",
                 quantize_int8: bool = False, device: str = "cpu", language: str | None = None,
                 task: str | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 trim_last_window: bool = False, cache_dir: str | Path | None = None,
                 threads: int | None = None) -> "AudioPipeline":
        """Load what `mode` needs from `model_dir/audio/` (or a plain HF Whisper directory).

        embed: encoder weights + adapter; transcribe: encoder + decoder + tokenizer.json.
        backend "onnx" exports (once, cached) and runs ONNX Runtime; `quantize_int8` uses
        dynamically quantised int8 graphs (ONNX only). `threads` caps ONNX Runtime's pool.
        """
        if mode not in MODES:
            raise AudioModelError(f"mode must be one of {MODES}, got {mode!r}")
        if backend not in BACKENDS:
            raise AudioModelError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if quantize_int8 and backend != "onnx":
            raise AudioModelError("quantize_int8 applies to the 'onnx' backend only")
        audio_dir = resolve_audio_dir(model_dir)
        cfg = WhisperConfig.from_dir(audio_dir)
        adapter = tokenizer = generation = None
        if mode == "embed":
            acfg = AdapterConfig.from_dir(audio_dir)
            if acfg.encoder_d_model != cfg.d_model:
                raise AudioModelError(f"{audio_dir}/adapter_config.json: encoder_d_model "
                                      f"{acfg.encoder_d_model} != config.json d_model {cfg.d_model}")
            adapter = NumpyAdapter(acfg, read_adapter_weights(audio_dir, acfg))
        else:
            from tokenizers import Tokenizer
            tok_path = audio_dir / "tokenizer.json"
            if not tok_path.is_file():
                raise AudioModelError(f"{tok_path}: missing (transcribe mode needs the tokenizer)")
            tokenizer = Tokenizer.from_file(str(tok_path))
            generation = GenerationSettings.from_dir(audio_dir, cfg, tokenizer)
        with_decoder = mode == "transcribe"
        if backend == "torch":
            from .torch_backend import TorchWhisper
            if threads:
                import torch
                torch.set_num_threads(int(threads))
            engine = TorchWhisper(audio_dir, cfg, with_decoder, device=device)
        else:
            from .onnx_backend import OnnxWhisper
            engine = OnnxWhisper(audio_dir, cfg, with_decoder, quantize_int8=quantize_int8,
                                 cache_dir=None if cache_dir is None else Path(cache_dir), threads=threads)
        pipe = cls(audio_dir, mode, engine, cfg, adapter, tokenizer, generation, language, task,
                   max_seconds, trim_last_window)
        if mode == "transcribe" and language is not None:
            from .generate import language_token_id
            language_token_id(generation, language)      # fail at load, not on the first request
        return pipe

    # --- properties the stage reports -------------------------------------------------------
    @property
    def decoder_hidden(self) -> int | None:
        return self.adapter.cfg.decoder_hidden if self.adapter else None

    @property
    def n_mels(self) -> int:
        return self.cfg.num_mel_bins

    @property
    def providers(self) -> list[str]:
        return self.backend.providers

    def tokens_for_samples(self, n_samples_16k: int) -> int:
        """Embed-mode token count for a clip of this many 16 kHz samples (for prompt layout)."""
        if self.adapter is None:
            raise AudioModelError("tokens_for_samples applies to embed mode")
        total, left = 0, n_samples_16k
        while left > 0:
            n = min(left, WINDOW_SAMPLES)
            total += token_count(-(-valid_mel_frames(n) // 2), self.adapter.cfg.pooling)
            left -= n
        return total

    # --- one window -------------------------------------------------------------------------
    def process_window(self, pcm16k: np.ndarray, index: int = 0, start_s: float = 0.0) -> AudioWindow:
        """Run one window (at most 30 s of mono 16 kHz float32)."""
        n = int(pcm16k.size)
        if n == 0 or n > WINDOW_SAMPLES:
            raise AudioInputError(f"a window holds 1 to {WINDOW_SAMPLES} samples, got {n}")
        valid = valid_mel_frames(n)
        frames = WINDOW_FRAMES
        if self.trim_last_window and n < WINDOW_SAMPLES:
            frames = valid + (valid % 2)          # the encoder's stride-2 conv wants an even count
        t0 = time.perf_counter()
        mel = log_mel_spectrogram(pcm16k, self.cfg.num_mel_bins, frames)
        states = self.backend.encode(mel)
        t1 = time.perf_counter()
        win = AudioWindow(index=index, start_s=start_s, duration_s=n / SAMPLE_RATE)
        if self.mode == "embed":
            win.embeddings = self.adapter(states[: -(-valid // 2)])
        else:
            gen = self.generation
            session = self.backend.decoder_session(states)
            prefix = initial_tokens(gen, self.language, self.task, session.start)
            ids = greedy_decode(session, gen, prefix,
                                max_new_tokens(gen, len(prefix), self.cfg.max_target_positions))
            win.token_ids = ids
            win.text = self.tokenizer.decode(ids, skip_special_tokens=True)
        win.encode_ms = (t1 - t0) * 1e3
        win.decode_ms = (time.perf_counter() - t1) * 1e3
        return win

    # --- whole clips and streams --------------------------------------------------------------
    def process(self, pcm: np.ndarray, sample_rate: int) -> AudioResult:
        """A whole clip: validate, resample, window, run. Raises AudioInputError on bad audio."""
        mono = prepare_pcm(pcm, sample_rate, self.max_seconds)
        stream = self.stream(sample_rate)
        stream.feed(mono)
        stream.finish()
        return stream.result()

    def stream(self, sample_rate: int) -> "AudioStream":
        return AudioStream(self, sample_rate)

    def iter_windows(self, chunks: Iterable[np.ndarray], sample_rate: int) -> Iterator[AudioWindow]:
        """Yield each window's result as soon as the chunks that complete it have arrived."""
        stream = self.stream(sample_rate)
        for chunk in chunks:
            yield from stream.feed(chunk)
        yield from stream.finish()


class AudioStream:
    """Incremental input: `feed(chunk)` returns the windows it completed; `finish()` the rest."""

    def __init__(self, pipeline: AudioPipeline, sample_rate: int):
        self.pipeline = pipeline
        self.sample_rate = check_sample_rate(sample_rate)
        self.resampler = StreamingResampler(self.sample_rate, SAMPLE_RATE)
        self.buffer = np.zeros(0, np.float32)
        self.windows: list[AudioWindow] = []
        self.samples_in = 0
        self.emitted_16k = 0
        self.finished = False

    def _take_windows(self, final: bool) -> list[AudioWindow]:
        out = []
        while self.buffer.size >= WINDOW_SAMPLES or (final and self.buffer.size > 0):
            piece, self.buffer = self.buffer[:WINDOW_SAMPLES], self.buffer[WINDOW_SAMPLES:]
            if final and piece.size < MIN_TAIL_SAMPLES and self.windows:
                break
            win = self.pipeline.process_window(piece, len(self.windows), self.emitted_16k / SAMPLE_RATE)
            self.emitted_16k += piece.size
            self.windows.append(win)
            out.append(win)
        return out

    def feed(self, pcm: np.ndarray) -> list[AudioWindow]:
        if self.finished:
            raise AudioInputError("audio stream already finished")
        mono = to_mono_float32(pcm)
        check_pcm_values(mono)
        self.samples_in += mono.size
        if self.samples_in / self.sample_rate > self.pipeline.max_seconds:
            raise AudioInputError(f"audio is longer than the {self.pipeline.max_seconds:.0f} s limit")
        self.buffer = np.concatenate([self.buffer, self.resampler.push(mono)])
        return self._take_windows(final=False)

    def finish(self) -> list[AudioWindow]:
        if self.finished:
            return []
        self.finished = True
        if self.samples_in == 0:
            raise AudioInputError("audio is empty (0 samples)")
        self.buffer = np.concatenate([self.buffer, self.resampler.flush()])
        return self._take_windows(final=True)

    def result(self) -> AudioResult:
        return AudioResult(self.pipeline.mode, list(self.windows), self.pipeline.decoder_hidden)
