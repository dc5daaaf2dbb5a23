"""The torch backend: Whisper encoder (+ decoder for transcribe mode) on CPU or GPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modelcore.checkpoint import CheckpointError, CheckpointReader, load_module

from .config import WhisperConfig
from .errors import AudioModelError
from .model import WhisperDecoder, WhisperEncoder

ENCODER_PREFIX = "model.encoder."
DECODER_PREFIX = "model.decoder."


def load_whisper_modules(audio_dir: Path, cfg: WhisperConfig, with_decoder: bool,
                         device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Read only the tensors of the parts we run: the decoder's stay on disk in embed mode."""
    try:
        reader = CheckpointReader(audio_dir)
        with torch.device("meta"):
            encoder = WhisperEncoder(cfg)
            decoder = WhisperDecoder(cfg) if with_decoder else None
        load_module(encoder, reader, ENCODER_PREFIX, dtype=dtype, device=device)
        if decoder is not None:
            load_module(decoder, reader, DECODER_PREFIX, dtype=dtype, device=device)
    except CheckpointError as exc:
        raise AudioModelError(str(exc)) from None
    return encoder.eval(), (decoder.eval() if decoder is not None else None)


class TorchDecoderSession:
    """Incremental decoding with a self-attention KV cache; cross K/V computed once."""

    def __init__(self, decoder: WhisperDecoder, cross_kv: torch.Tensor):
        self.decoder, self.cross_kv, self.cache = decoder, cross_kv, None

    @torch.inference_mode()
    def _run(self, ids: list[int]) -> np.ndarray:
        x = torch.tensor([ids], dtype=torch.long, device=self.cross_kv.device)
        logits, self.cache = self.decoder(x, self.cross_kv, self.cache)
        return logits[0, -1].float().cpu().numpy()

    def start(self, prefix: list[int]) -> np.ndarray:
        self.cache = None
        return self._run(prefix)

    def step(self, token: int) -> np.ndarray:
        return self._run([token])


class TorchWhisper:
    name = "torch"

    def __init__(self, audio_dir: Path, cfg: WhisperConfig, with_decoder: bool,
                 device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.encoder, self.decoder = load_whisper_modules(audio_dir, cfg, with_decoder, device, dtype)

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device}"]

    @torch.inference_mode()
    def encode(self, mel: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(mel).to(self.device, self.dtype)[None]
        return self.encoder(x)[0].float().cpu().numpy()

    @torch.inference_mode()
    def decoder_session(self, states: np.ndarray) -> TorchDecoderSession:
        if self.decoder is None:
            raise AudioModelError("this pipeline was loaded without the Whisper decoder")
        enc = torch.from_numpy(states).to(self.device, self.dtype)[None]
        return TorchDecoderSession(self.decoder, self.decoder.cross_key_values(enc))
