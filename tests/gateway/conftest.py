"""Fixtures of the gateway tests: a tiny byte-level BPE trained here (GLM special tokens by
name, reasoning tags as ordinary added tokens, as in GLM-4.1V's tokenizer.json) and a scripted
pipeline that plays the engine's side of the PipelineClient protocol."""
from __future__ import annotations

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from modelcore.tokenizer import SPECIAL_TOKEN_NAMES, TAG_TOKEN_NAMES, GlmTokenizer

CORPUS = [
    "hello world, this is a small corpus for a byte level tokenizer",
    "the phone agent taps the screen and types text",
    "Let me think step by step about the screenshot.",
    "do(action=\"Tap\", element=[500, 500])",
    "finish(message=\"done\")",
    "你好，我是一个手机助手。",  # few merges: CJK characters stay split across byte tokens
]


def train_tiny_bpe(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False)
                            for n in SPECIAL_TOKEN_NAMES])
    tok.add_tokens([AddedToken(n, special=False, normalized=False) for n in TAG_TOKEN_NAMES])
    return tok


@pytest.fixture(scope="session")
def bpe() -> Tokenizer:
    return train_tiny_bpe()


@pytest.fixture(scope="session")
def glm_tok(bpe) -> GlmTokenizer:
    return GlmTokenizer(bpe)
