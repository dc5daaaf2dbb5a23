"""Reading and writing Hugging Face safetensors checkpoints, one tensor at a time.

A stage asks only for the tensors under its own prefix (`model.visual.` for vision,
`model.language_model.` and `lm_head.` for the decoder), so the vision process never maps
the decoder's 18 GB. Sharded checkpoints are found through model.safetensors.index.json.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file is missing, a tensor is absent, or a shape does not fit the model."""


class CheckpointReader:
    """Maps tensor names to the shard that holds them; reads tensors lazily on request."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: model directory does not exist")
        self._where = self._locate_tensors()

    def _locate_tensors(self) -> dict[str, Path]:
        index = self.dir / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            shards = {name: self.dir / shard for name, shard in weight_map.items()}
            for shard in sorted(set(shards.values())):
                if not shard.is_file():
                    raise CheckpointError(f"{shard}: shard named in {INDEX_NAME} is missing")
            return shards
        files = [self.dir / SINGLE_NAME] if (self.dir / SINGLE_NAME).is_file() \
            else sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"{self.dir}: no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors file")
        where = {}
        for path in files:
            with safe_open(path, framework="pt") as f:
                where.update({name: path for name in f.keys()})
        return where

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._where if n.startswith(prefix))

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def read(self, names: Iterable[str], dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Read the named tensors, opening each shard once; cast to `dtype` if given."""
        by_shard: dict[Path, list[str]] = {}
        for name in names:
            if name not in self._where:
                raise CheckpointError(f"{self.dir}: tensor {name!r} is not in the checkpoint")
            by_shard.setdefault(self._where[name], []).append(name)
        out = {}
        for shard, shard_names in by_shard.items():
            with safe_open(shard, framework="pt", device=str(device)) as f:
                for name in shard_names:
                    t = f.get_tensor(name)
                    out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def read_prefix(self, prefix: str, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """All tensors under `prefix`, keyed by their name with the prefix removed."""
        tensors = self.read(self.names(prefix), dtype=dtype, device=device)
        return {name[len(prefix):]: t for name, t in tensors.items()}


def load_module(module: torch.nn.Module, reader: CheckpointReader, prefix: str,
                dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                rename: Mapping[str, str] | None = None,
                concat: Mapping[str, Sequence[str]] | None = None) -> None:
    """Fill every parameter and buffer of `module` from `prefix` + its name, strictly.

    Missing tensors and shape mismatches are errors naming the tensor; tensors in the
    checkpoint under `prefix` that the module does not have are errors too, since they mean
    the config and the weights disagree. `rename` maps a module name to a checkpoint name
    where the two differ; `concat` maps a module name to several checkpoint names whose
    tensors are concatenated along dim 0 (a fused projection stored as separate ones).
    """
    rename, concat = dict(rename or {}), dict(concat or {})
    expected = {name: t for name, t in module.state_dict().items()}
    sources = {name: [prefix + n for n in concat[name]] if name in concat
               else [prefix + rename.get(name, name)] for name in expected}
    used = {ckpt for names in sources.values() for ckpt in names}
    unexpected = sorted(set(reader.names(prefix)) - used)
    if unexpected:
        raise CheckpointError(
            f"{reader.dir}: {len(unexpected)} tensors under {prefix!r} that the model does not "
            f"use, first {unexpected[0]!r}: does config.json match the weights?")
    loaded = reader.read(used, dtype=dtype, device=device)
    state = {}
    for name, ckpt_names in sources.items():
        # Parts are dropped as soon as they are concatenated: the extra memory is one tensor's.
        parts = [loaded.pop(n) for n in ckpt_names]
        rows = sum(p.shape[0] for p in parts if p.dim())
        shape = parts[0].shape if len(parts) == 1 else (rows, *parts[0].shape[1:])
        if tuple(shape) != tuple(expected[name].shape) or any(
                p.shape[1:] != parts[0].shape[1:] for p in parts):
            what = " + ".join(f"{n!r} {tuple(p.shape)}" for n, p in zip(ckpt_names, parts))
            raise CheckpointError(
                f"{reader.dir}: tensor {what} does not give the shape the config implies, "
                f"{tuple(expected[name].shape)}")
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        state[name] = tensor
    module.load_state_dict(state, strict=True, assign=True)


def save_checkpoint(tensors: Mapping[str, torch.Tensor], model_dir: str | Path,
                    max_shard_bytes: int = 5 * 1024**3) -> list[Path]:
    """Write tensors as safetensors, sharded with an index when over `max_shard_bytes`."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        path = model_dir / SINGLE_NAME
        save_file(shards[0], path, metadata=meta)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = model_dir / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path, metadata=meta)
        weight_map.update({name: path.name for name in shard})
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return paths
