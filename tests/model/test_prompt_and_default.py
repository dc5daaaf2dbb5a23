"""Tokenizer, chat template and the embedded default checkpoint, against transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modelcore.make_checkpoint import train_tokenizer, write_default_checkpoint
from modelcore.prompt import PromptError, build_prompt, expand_image_tokens, render
from modelcore.tokenizer import IMAGE, GlmTokenizer


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    return write_default_checkpoint(tmp_path_factory.mktemp("default"))


def _images():
    rs = np.random.RandomState(0)
    return [Image.fromarray((rs.rand(200, 300, 3) * 255).astype("uint8")),
            Image.fromarray((rs.rand(400, 120, 3) * 255).astype("uint8"))]


def _messages(images):
    return [{"role": "system", "content": "You are a phone agent."},
            {"role": "user", "content": [{"type": "image", "image": images[0]},
                                         {"type": "text", "text": "Open settings"}]},
            {"role": "assistant", "content": '<think>ok</think><answer>do(action="Home")</answer>'},
            {"role": "user", "content": [{"type": "image", "image": images[1]},
                                         {"type": "text", "text": "next 你好"}]}]


def test_special_tokens_resolved_by_name(default_dir):
    tok = GlmTokenizer.from_dir(default_dir)
    cfg = json.loads((default_dir / "config.json").read_text())
    assert tok.special[IMAGE] == cfg["image_token_id"]
    assert tok.special["<|begin_of_image|>"] == cfg["image_start_token_id"]
    gen = json.loads((default_dir / "generation_config.json").read_text())
    assert list(tok.eos_token_ids) == gen["eos_token_id"]
    assert tok.eos_token_ids == tuple(tok.special[n] for n in ("<|endoftext|>", "<|user|>", "<|observation|>"))
    ids = tok.encode("[gMASK]<sop><|user|>\nhi<think>x</think>")
    assert ids[:3] == [tok.special["[gMASK]"], tok.special["<sop>"], tok.special["<|user|>"]]
    assert tok.decode(ids, skip_special_tokens=True) == "\nhi<think>x</think>"


def test_prompt_matches_transformers_template_and_processor(default_dir):
    from transformers import PreTrainedTokenizerFast
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from perception.vision.processor import ImageProcessor

    images = _images()
    msgs = _messages(images)
    hf_tok = PreTrainedTokenizerFast.from_pretrained(default_dir)
    tok = GlmTokenizer.from_dir(default_dir)
    for thinking in (None, False):
        kw = {} if thinking is None else {"enable_thinking": thinking}
        ref = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kw)
        assert render(msgs, tok.chat_template, enable_thinking=thinking) == ref
    pc = json.loads((default_dir / "preprocessor_config.json").read_text())
    grids = Glm4vImageProcessorPil(size=pc["size"], patch_size=14, temporal_patch_size=2,
                                   merge_size=2)(images, return_tensors="pt")["image_grid_thw"]
    ours = ImageProcessor.from_dir(default_dir)
    counts = [ours.preprocess(im).num_tokens for im in images]
    assert counts == (grids.prod(-1) // 4).tolist()
    # What Glm4vProcessor does: each <|image|> becomes count copies, then tokenize.
    text = ref_text = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    for c in counts:
        text = text.replace(IMAGE, "\0" * c, 1)
    ref_ids = hf_tok(text.replace("\0", IMAGE), add_special_tokens=False)["input_ids"]
    prompt = build_prompt(tok, msgs, counts)
    assert prompt.text == ref_text
    assert prompt.ids == ref_ids


def test_prompt_structure_and_thinking_off(default_dir):
    tok = GlmTokenizer.from_dir(default_dir)
    msgs = [{"role": "user", "content": "Hello"}]
    assert render(msgs, tok.chat_template) == "[gMASK]<sop><|user|>\nHello<|assistant|>\n"
    assert render(msgs, tok.chat_template, enable_thinking=False).endswith(
        "<|assistant|>\n<think></think>\n")
    assert render(msgs, None, add_generation_prompt=False) == "[gMASK]<sop><|user|>\nHello"


def test_string_content_format_flattening():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "task"},
                                         {"type": "image_url", "image_url": {"url": "data:"}},
                                         {"type": "text", "text": "info"}]}]
    assert render(msgs, content_format="string") == (
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>\ntask\ninfo<|assistant|>\n")
    assert render(msgs) == ("[gMASK]<sop><|user|>\ntask<|begin_of_image|><|image|>"
                            "<|end_of_image|>info<|assistant|>\n")


def test_developer_is_the_system_role():
    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert render(msgs) == render([{**msgs[0], "role": "system"}, msgs[1]])
    assert "<|system|>" in render(msgs)


def test_prompt_errors(default_dir):
    tok = GlmTokenizer.from_dir(default_dir)
    with pytest.raises(PromptError, match="unknown role"):
        render([{"role": "robot", "content": "x"}])
    with pytest.raises(PromptError, match="unsupported content part 'audio'"):
        render([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(PromptError, match="1 image placeholder.*0 image"):
        build_prompt(tok, [{"role": "user", "content": [{"type": "image"}]}], [])


def test_image_placeholders_expand_to_each_images_token_count():
    """Against the definition (every placeholder becomes its image's count of copies, every
    other id stays), on random prompts with 0-3 images, placeholders at the ends included."""
    import random

    rng = random.Random(3)
    image = 9
    for _ in range(300):
        ids = [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
        counts = [rng.randrange(0, 5) for _ in range(rng.randrange(0, 4))]
        for _ in counts:
            ids.insert(rng.randrange(len(ids) + 1), image)
        expected, it = [], iter(counts)
        for i in ids:
            expected += [image] * next(it) if i == image else [i]
        assert expand_image_tokens(ids, image, counts) == expected
    with pytest.raises(PromptError, match="1 image placeholder.* but 2 image"):
        expand_image_tokens([1, image, 2], image, [3, 4])


def test_tokenizer_training_is_deterministic(default_dir):
    again = json.loads(train_tokenizer().to_str())
    assert again == json.loads((default_dir / "tokenizer.json").read_text())
    assert len(again["model"]["merges"]) > 1000


def test_default_checkpoint_loads_in_transformers_and_matches(default_dir):
    from transformers import Glm4vForConditionalGeneration
    from decision.decoder import GlmDecoder
    from decision.fusion import merge_image_embeddings, mrope_positions
    from perception.vision.model import VisionTower
    from perception.vision.processor import ImageProcessor

    size = sum(f.stat().st_size for f in default_dir.iterdir())
    assert size < 40e6
    hf, info = Glm4vForConditionalGeneration.from_pretrained(
        default_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = hf.config
    assert cfg.text_config.rope_parameters["partial_rotary_factor"] == 0.5
    tok = GlmTokenizer.from_dir(default_dir)
    image = ImageProcessor.from_dir(default_dir).preprocess(_images()[1])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Tap it"}]}]
    ids = build_prompt(tok, msgs, [image.num_tokens]).ids
    ids_t = torch.tensor(ids)
    pixels = torch.from_numpy(image.pixel_values)
    with torch.no_grad():
        ref = hf(input_ids=ids_t[None], pixel_values=pixels,
                 image_grid_thw=torch.tensor([image.grid_thw]),
                 mm_token_type_ids=(ids_t == cfg.image_token_id).int()[None]).logits[0]
        dec = GlmDecoder.from_pretrained(default_dir)
        feats = VisionTower.from_pretrained(default_dir)(pixels, [image.grid_thw])
        emb = merge_image_embeddings(dec.embed(ids_t), ids_t, cfg.image_token_id, feats)
        pos = mrope_positions(ids, cfg.image_token_id, [image.grid_thw], 2)
        ours = dec.logits(dec(emb, pos.ids, dec.new_cache(len(ids))))
    assert (ours - ref).abs().max().item() < 2e-4


def test_make_checkpoint_cli_and_api(tmp_path, monkeypatch):
    from launch.cli import main
    from modelcore.api import AutoGLMModel, MultiModalConfig
    from modelcore.make_checkpoint import ensure_default_checkpoint

    assert main(["make-checkpoint", str(tmp_path / "m")]) == 0
    with pytest.raises(SystemExit, match="not empty"):
        main(["make-checkpoint", str(tmp_path / "m")])
    monkeypatch.setenv("AUTOGLM_CACHE_DIR", str(tmp_path / "cache"))
    path = ensure_default_checkpoint()
    assert ensure_default_checkpoint() == path and (path / "config.json").is_file()
    model = AutoGLMModel.from_pretrained(tmp_path / "m", MultiModalConfig(quantize="int8"))
    table = model.summary()
    assert "text_decoder" in table and "layers.3" in table and "vision_encoder" in table
    out = model.generate_ids([{"role": "user", "content": [{"type": "image"}, "hi"]}],
                             images=_images()[:1], max_new_tokens=4)
    assert 1 <= len(out) <= 4
    for bad in (dict(quantize="int4"), dict(vision_encoder="resnet"), dict(dtype="int3")):
        with pytest.raises(ValueError, match="not supported"):
            MultiModalConfig(**bad)
