"""The ONNX Runtime backend: graphs exported once from the torch modules and cached.

Three graphs: `encoder` (log-mel -> states, frame axis dynamic), and for transcribe mode
`cross_kv` (states -> every decoder layer's cross-attention K/V) and `decoder_step`
(new tokens + cross K/V + self-attention cache -> next-token logits + grown cache; the cache
starts with length 0).

Cache location: `<audio_dir>/onnx/<key>/` when the checkpoint directory is writable, else
`$AUTOGLM_CACHE_DIR/audio-onnx/<key>/` (default `~/.cache/autoglm/audio-onnx/<key>/`). The key
hashes config.json, the weight file's size and mtime, and the torch / exporter versions, so a
changed checkpoint is re-exported, never served stale.
int8: `onnxruntime.quantization.quantize_dynamic` on the MatMul weights (per-tensor, signed),
activations quantised at run time. Meant for CPU edge boxes; accuracy loss is measured in
tests/audio/test_onnx.py and benchmarks/audio.py.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .config import WhisperConfig
from .errors import AudioModelError

EXPORT_VERSION = "audio-onnx-2"    # bump when the exported graphs change shape or semantics
OPSET = 17


def _weights_fingerprint(audio_dir: Path) -> str:
    parts = [(audio_dir / "config.json").read_text()]
    for path in sorted(audio_dir.glob("*.safetensors")) + sorted(audio_dir.glob("*.safetensors.index.json")):
        if path.name == "adapter.safetensors":
            continue        # the adapter runs outside the graphs
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    import torch
    parts += [EXPORT_VERSION, torch.__version__, str(OPSET)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def default_cache_root() -> Path:
    root = os.environ.get("AUTOGLM_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "autoglm") / "audio-onnx"


def _is_writable(directory: Path) -> bool:
    """Try it: os.access says yes for root on a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def cache_dir_for(audio_dir: Path, cache_dir: Path | None = None) -> Path:
    key = _weights_fingerprint(audio_dir)
    if cache_dir is not None:
        return Path(cache_dir) / key
    if _is_writable(audio_dir):
        return audio_dir / "onnx" / key
    return default_cache_root() / key


def _atomic_export(export_fn, target: Path) -> None:
    """Write to a temp name in the same folder, then rename: a crash never leaves half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        export_fn(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_graphs(audio_dir: Path, cfg: WhisperConfig, with_decoder: bool, out_dir: Path) -> dict[str, Path]:
    import torch

    from .model import CrossKV, DecoderStep
    from .torch_backend import load_whisper_modules

    paths = {"encoder": out_dir / "encoder.onnx"}
    if with_decoder:
        paths.update(cross_kv=out_dir / "cross_kv.onnx", decoder_step=out_dir / "decoder_step.onnx")
    if all(p.is_file() for p in paths.values()):
        return paths
    encoder, decoder = load_whisper_modules(audio_dir, cfg, with_decoder)
    frames = 2 * cfg.max_source_positions
    d, heads = cfg.d_model, cfg.decoder_attention_heads

    def export(module, args, names_in, names_out, axes):
        def run(tmp):
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")   # the legacy exporter's deprecation/tracer notes
                torch.onnx.export(module, args, tmp, dynamo=False, opset_version=OPSET,
                                  input_names=names_in, output_names=names_out,
                                  dynamic_axes=axes, do_constant_folding=True)
        return run

    # The legacy TorchScript exporter: it needs no onnxscript and handles these static graphs.
    if not paths["encoder"].is_file():
        _atomic_export(export(encoder, (torch.zeros(1, cfg.num_mel_bins, frames),), ["mel"], ["states"],
                              {"mel": {2: "frames"}, "states": {1: "positions"}}), paths["encoder"])
    if with_decoder:
        states = torch.zeros(1, cfg.max_source_positions, d)
        if not paths["cross_kv"].is_file():
            _atomic_export(export(CrossKV(decoder), (states,), ["states"], ["cross_kv"],
                                  {"states": {1: "positions"}, "cross_kv": {4: "positions"}}),
                           paths["cross_kv"])
        if not paths["decoder_step"].is_file():
            kv = torch.zeros(cfg.decoder_layers, 2, 1, heads, cfg.max_source_positions, d // heads)
            past = torch.zeros(cfg.decoder_layers, 2, 1, heads, 3, d // heads)
            ids = torch.zeros(1, 2, dtype=torch.long)
            _atomic_export(export(DecoderStep(decoder), (ids, kv, past), ["input_ids", "cross_kv", "past"],
                                  ["logits", "present"],
                                  {"input_ids": {1: "length"}, "cross_kv": {4: "positions"},
                                   "past": {4: "past_length"}, "present": {4: "total_length"}}),
                           paths["decoder_step"])
    return paths


def quantize_graphs(paths: dict[str, Path]) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import logging

    def drop_preprocess_hint(record):   # quantize_dynamic logs this advice on the root logger
        return not str(record.msg).startswith("Please consider to run pre-processing")

    out = {}
    logging.getLogger().addFilter(drop_preprocess_hint)
    try:
        out = _quantize_each(paths, quantize_dynamic, QuantType)
    finally:
        logging.getLogger().removeFilter(drop_preprocess_hint)
    return out


def _quantize_each(paths, quantize_dynamic, QuantType) -> dict[str, Path]:
    out = {}
    for name, src in paths.items():
        dst = src.with_suffix(".int8.onnx")
        if not dst.is_file():
            _atomic_export(lambda tmp, src=src: quantize_dynamic(
                str(src), tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]), dst)
        out[name] = dst
    return out


def pick_providers() -> list[str]:
    """CUDA where the GPU build and a GPU are both present, the CPU provider otherwise.

    onnxruntime-gpu lists CUDAExecutionProvider even on machines without CUDA libraries and
    logs an error when asked for it, so we also require torch to see a GPU.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        try:
            import torch
            if torch.cuda.is_available():
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        except ImportError:
            pass
    return ["CPUExecutionProvider"]


class OnnxDecoderSession:
    def __init__(self, step, cross_kv: np.ndarray, past_shape: tuple[int, ...]):
        self.run_step, self.cross_kv, self.empty = step, cross_kv, np.zeros(past_shape, np.float32)
        self.past = self.empty

    def _run(self, ids: list[int]) -> np.ndarray:
        logits, self.past = self.run_step(None, {"input_ids": np.asarray([ids], dtype=np.int64),
                                                 "cross_kv": self.cross_kv, "past": self.past})
        return logits[0]

    def start(self, prefix: list[int]) -> np.ndarray:
        self.past = self.empty
        return self._run(list(prefix))

    def step(self, token: int) -> np.ndarray:
        return self._run([int(token)])


class OnnxWhisper:
    def __init__(self, audio_dir: Path, cfg: WhisperConfig, with_decoder: bool, quantize_int8: bool = False,
                 cache_dir: Path | None = None, threads: int | None = None,
                 providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise AudioModelError("backend 'onnx' needs the onnxruntime (or onnxruntime-gpu) package") from None
        self.name = "onnx-int8" if quantize_int8 else "onnx"
        self.dir = cache_dir_for(audio_dir, cache_dir)
        paths = export_graphs(audio_dir, cfg, with_decoder, self.dir)
        if quantize_int8:
            paths = quantize_graphs(paths)
        self.paths = paths
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self._providers = providers or pick_providers()
        self.sessions = {name: ort.InferenceSession(str(p), opts, providers=self._providers)
                         for name, p in paths.items()}

    @property
    def providers(self) -> list[str]:
        return self.sessions["encoder"].get_providers()

    def encode(self, mel: np.ndarray) -> np.ndarray:
        return self.sessions["encoder"].run(None, {"mel": mel[None].astype(np.float32)})[0][0]

    def decoder_session(self, states: np.ndarray) -> OnnxDecoderSession:
        if "decoder_step" not in self.sessions:
            raise AudioModelError("this pipeline was loaded without the Whisper decoder")
        cross_kv = self.sessions["cross_kv"].run(None, {"states": states[None].astype(np.float32)})[0]
        layers, _, _, heads, _, head_dim = cross_kv.shape
        return OnnxDecoderSession(self.sessions["decoder_step"].run, cross_kv, (layers, 2, 1, heads, 0, head_dim))
