"""The low-rank cross-modal adapter (embed mode): encoder states -> decoder-width tokens.

    tokens = up(act(down(avg_pool(states, pooling))))

`down` [rank, d_model] and `up` [decoder_hidden, rank] (+ bias) are the two factors of a
rank-r map, the "LoRA-based projection" of the design documents. Pooling averages groups of
`pooling` encoder frames (20 ms each): pooling 4 gives 12.5 tokens per second of speech.
Only frames that cover real audio are kept, so a 5 s clip gives 63 tokens, not 375.
Tensors, in adapter.safetensors: `audio_adapter.down.weight`, `audio_adapter.up.weight`,
`audio_adapter.up.bias`. It runs in NumPy for every backend: it is two thin matmuls, and the
states go to host memory anyway on their way into shared memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import AdapterConfig
from .errors import AudioModelError

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_TENSORS = ("down.weight", "up.weight", "up.bias")


def read_adapter_weights(audio_dir: Path, cfg: AdapterConfig) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    path = audio_dir / ADAPTER_FILE
    if not path.is_file():
        raise AudioModelError(f"{path}: missing (embed mode needs the adapter weights)")
    out = {}
    with safe_open(path, framework="np") as f:
        names = set(f.keys())
        for short in ADAPTER_TENSORS:
            name = cfg.prefix + short
            if name not in names:
                raise AudioModelError(f"{path}: tensor {name!r} is missing")
            out[short] = f.get_tensor(name).astype(np.float32)
    expect = {"down.weight": (cfg.rank, cfg.encoder_d_model),
              "up.weight": (cfg.decoder_hidden, cfg.rank), "up.bias": (cfg.decoder_hidden,)}
    for short, shape in expect.items():
        if out[short].shape != shape:
            raise AudioModelError(
                f"{path}: {cfg.prefix}{short} has shape {out[short].shape}, adapter_config.json implies {shape}")
    return out


def pool_frames(states: np.ndarray, pooling: int) -> np.ndarray:
    """Average groups of `pooling` rows of [T, d]; the last, partial group averages what it has."""
    t, d = states.shape
    n = -(-t // pooling)
    pad = n * pooling - t
    sums = np.concatenate([states, np.zeros((pad, d), states.dtype)]).reshape(n, pooling, d).sum(1)
    counts = np.full((n, 1), pooling, np.float32)
    counts[-1, 0] = pooling - pad
    return sums / counts


class NumpyAdapter:
    def __init__(self, cfg: AdapterConfig, weights: dict[str, np.ndarray]):
        self.cfg = cfg
        self.down_t = np.ascontiguousarray(weights["down.weight"].T)
        self.up_t = np.ascontiguousarray(weights["up.weight"].T)
        self.bias = weights["up.bias"]

    def __call__(self, states: np.ndarray) -> np.ndarray:
        x = pool_frames(states.astype(np.float32), self.cfg.pooling) @ self.down_t
        if self.cfg.activation == "gelu":
            import torch  # exact erf GELU; only reached with activation="gelu"
            x = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
        return (x @ self.up_t + self.bias).astype(np.float32)


def token_count(encoder_frames: int, pooling: int) -> int:
    return -(-encoder_frames // pooling)
