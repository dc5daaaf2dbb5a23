"""Clear errors for broken checkpoints."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from decision.decoder import GlmDecoder
from decision.fusion import FusionError, merge_image_embeddings, mrope_positions
from modelcore.checkpoint import CheckpointError
from modelcore.config import ConfigError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        GlmDecoder.from_pretrained(tmp_path)


def test_unsupported_architecture(hf_tiny, tmp_path):
    d = _copy(hf_tiny[1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["LlamaForCausalLM"], "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported architecture"):
        GlmDecoder.from_pretrained(d)


def test_missing_weights_file(hf_tiny, tmp_path):
    d = _copy(hf_tiny[1], tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        GlmDecoder.from_pretrained(d)


def test_shape_mismatch_names_tensor(hf_tiny, tmp_path):
    d = _copy(hf_tiny[1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="gate_up_proj.weight.*shape"):
        GlmDecoder.from_pretrained(d)


def test_bad_mrope_section(hf_tiny, tmp_path):
    d = _copy(hf_tiny[1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [8, 12, 12]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="mrope_section"):
        GlmDecoder.from_pretrained(d)


def test_fusion_count_mismatch():
    ids = torch.tensor([1, 9, 9, 9, 2])
    with pytest.raises(FusionError, match="3 image placeholder tokens but 4"):
        merge_image_embeddings(torch.zeros(5, 8), ids, 9, torch.zeros(4, 8))
    with pytest.raises(FusionError, match="needs 4 placeholder"):
        mrope_positions(ids.tolist(), 9, [(1, 4, 4)], 2)
    with pytest.raises(FusionError, match="2 image grid"):
        mrope_positions([1, 9, 2], 9, [(1, 2, 2), (1, 2, 2)], 2)
