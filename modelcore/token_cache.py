"""Token ids of a long prompt put together from cached pieces.

A phone agent sends its whole conversation with every step: the same system prompt and the
same earlier turns, plus one new turn. Tokenising all of it again costs milliseconds by the
fiftieth step (6.4 ms for ~10,000 text tokens with the embedded tokenizer), though only the
new turn is new.

The `tokenizers` library cuts the input at its added tokens (<|user|>, <think>, ...) before
anything else, and tokenises each piece between them on its own. So the ids of a text are the
ids of its pieces, each looked up in an LRU cache or tokenised once, with the added tokens'
ids between them. That holds when no added token strips the whitespace next to it or matches
only whole words, and when there is no normalizer (which would run over the whole text): the
cache checks this for the tokenizer it gets, and also compares itself with the tokenizer on a
sample made of every added token; where either fails, it is not used (``enabled`` False).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict

from tokenizers import Tokenizer

# Below this many characters a prompt is tokenised whole: splitting would cost more than it saves.
MIN_CHARS = 1024
# Token ids kept, over all pieces (~36 bytes each as Python ints: ~18 MB at most); one agent
# conversation at the model's 25,480-token limit holds fewer than 25,480.
MAX_IDS = 500_000


class PieceCache:
    def __init__(self, tokenizer: Tokenizer, max_ids: int = MAX_IDS):
        self._tok = tokenizer
        self._max_ids = max_ids
        self._held_ids = 0
        self._pieces: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()   # the gateway prepares media requests in worker threads
        self.hits = self.misses = 0
        added = tokenizer.get_added_tokens_decoder()
        self._added_id = {a.content: i for i, a in added.items()}
        # Longest first: at one position the regex takes the first alternative that matches,
        # the tokenizer the longest added token.
        contents = sorted(self._added_id, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None
        self.enabled = (self._split is not None and tokenizer.normalizer is None
                        and not any(a.lstrip or a.rstrip or a.single_word for a in added.values())
                        and self._agrees(_sample(contents)))

    def encode(self, text: str) -> list[int]:
        """The ids `tokenizer.encode(text, add_special_tokens=False)` gives. Needs ``enabled``."""
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:                       # the split keeps the added tokens at odd places
                ids.append(self._added_id[part])
            elif part:
                ids.extend(self._piece(part))
        return ids

    def _piece(self, text: str) -> tuple[int, ...]:
        with self._lock:
            ids = self._pieces.get(text)
            if ids is not None:
                self._pieces.move_to_end(text)
                self.hits += 1
                return ids
        ids = tuple(self._tok.encode(text, add_special_tokens=False).ids)
        with self._lock:
            self.misses += 1
            if len(ids) <= self._max_ids // 4 and text not in self._pieces:
                self._pieces[text] = ids
                self._held_ids += len(ids)
                while self._held_ids > self._max_ids:
                    self._held_ids -= len(self._pieces.popitem(last=False)[1])
        return ids

    def _agrees(self, sample: str) -> bool:
        try:
            return self.encode(sample) == self._tok.encode(sample, add_special_tokens=False).ids
        finally:
            self._pieces.clear()
            self.hits = self.misses = self._held_ids = 0


def _sample(added: list[str]) -> str:
    """Every added token, each between text of the kinds that sit next to them in prompts
    (newlines, spaces, words, CJK, digits, punctuation), and twice in a row."""
    around = ("\n", " ", "hello world", "\n\n你好，世界", " 42 ", "{\"a\": [1, 2]}", "  \n ")
    parts = []
    for k, token in enumerate(added):
        parts += [around[k % len(around)], token, token, around[(k + 3) % len(around)]]
    return "".join(parts)
