"""Long prompts tokenised from cached pieces: the same ids as the tokenizer, and as
transformers' tokenizer, over a growing agent conversation."""
from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer

from modelcore.make_checkpoint import write_default_checkpoint
from modelcore.prompt import render
from modelcore.token_cache import MIN_CHARS, PieceCache, _sample
from modelcore.tokenizer import GlmTokenizer


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    return write_default_checkpoint(tmp_path_factory.mktemp("default"))


_WORDS = ["Tap", "搜索框", "联系人", "微信", " ", "  ", "\n", "\n\n", "42", "{\"app\": \"设置\"}",
          "<|use", "<thin", "</answer", "[gMAS", "<|image|", "emoji 🙂", "tab\t", "end."]


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_WORDS) for _ in range(n))


def _conversation(rng: random.Random, steps: int):
    """An agent's messages after each step: a long system prompt, then screen-info turns and
    thinking/answer turns, the last user turn with the current screenshot."""
    msgs = [{"role": "system", "content": _text(rng, 400)}]
    for step in range(steps):
        msgs.append({"role": "user", "content": [
            {"type": "text", "text": f"** Screen Info **\n\n{_text(rng, 20)}"}]})
        yield msgs + [{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": _text(rng, 8)}]}]
        msgs.append({"role": "assistant",
                     "content": f"<think>{_text(rng, 60)}</think><answer>do(action=\"Tap\", "
                                f"element=[{rng.randrange(1000)},{rng.randrange(1000)}])</answer>"})


def test_pieces_give_the_tokenizers_ids_and_transformers_ids(default_dir):
    from transformers import PreTrainedTokenizerFast

    tok = GlmTokenizer.from_dir(default_dir)
    hf = PreTrainedTokenizerFast.from_pretrained(default_dir)
    cache = tok._pieces
    assert cache is not None and cache.enabled
    rng = random.Random(3)
    for step, msgs in enumerate(_conversation(rng, 25)):
        text = render(msgs, tok.chat_template, True, None, "openai")
        assert len(text) >= MIN_CHARS   # the cached path
        ids = tok.encode(text)
        assert ids == tok.backend.encode(text, add_special_tokens=False).ids
        assert ids == hf.encode(text, add_special_tokens=False)
    # Each step tokenised only what was new: most pieces came from the cache.
    assert cache.hits > 5 * cache.misses
    # Short texts take the tokenizer's own path, with the same ids.
    short = "<|user|>\nhi<think>x</think>"
    misses = cache.misses
    assert tok.encode(short) == tok.backend.encode(short, add_special_tokens=False).ids
    assert cache.misses == misses


def test_the_cache_keeps_to_its_bound_and_stays_exact(default_dir):
    backend = Tokenizer.from_file(str(default_dir / "tokenizer.json"))
    cache = PieceCache(backend, max_ids=2000)
    rng = random.Random(5)
    for _ in range(60):
        text = "<|system|>" + _text(rng, 200) + "<|user|>" + _text(rng, 50) + "<|assistant|>"
        assert cache.encode(text) == backend.encode(text, add_special_tokens=False).ids
        assert cache._held_ids <= 2000
        assert cache._held_ids == sum(len(v) for v in cache._pieces.values())


def _edited(default_dir, edit) -> Tokenizer:
    spec = json.loads((default_dir / "tokenizer.json").read_text())
    edit(spec)
    return Tokenizer.from_str(json.dumps(spec))


def test_tokenizers_the_pieces_would_get_wrong_are_tokenised_whole(default_dir):
    def strip_after_user(spec):
        for t in spec["added_tokens"]:
            if t["content"] == "<|user|>":
                t["rstrip"] = True   # "<|user|>\nhi": the tokenizer drops the "\n"

    def lowercase(spec):
        spec["normalizer"] = {"type": "Lowercase"}

    for edit in (strip_after_user, lowercase):
        backend = _edited(default_dir, edit)
        assert not PieceCache(backend).enabled
        tok = GlmTokenizer(backend)
        text = ("<|user|>\nHello " + "Word " * 300) * 2
        assert tok.encode(text) == backend.encode(text, add_special_tokens=False).ids
    # Its own check against the tokenizer would have caught the first one too.
    backend = _edited(default_dir, strip_after_user)
    cache = PieceCache(backend)
    added = sorted(cache._added_id, key=len, reverse=True)
    assert cache._agrees(_sample(added)) is False
