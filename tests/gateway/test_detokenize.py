from hypothesis import given, settings, strategies as st

from execution.detokenize import IncrementalDetokenizer, StopStringMatcher, decode_fn

TEXTS = [
    "你好，我是一个手机助手。",
    "emoji 🙂👍🏽 and 中文 mixed with text",
    "do(action=\"Tap\", element=[500, 500])\nfinish(message=\"完成\")",
]


def stream_decode(bpe, ids, skip=()):
    d = IncrementalDetokenizer(decode_fn(bpe), skip_ids=skip)
    deltas = [d.push([i]) for i in ids]
    deltas.append(d.flush())
    return deltas


def test_multibyte_characters_span_several_tokens(bpe):
    # The premise of the test: with this tiny vocabulary CJK characters are split.
    ids = bpe.encode("你好").ids
    assert len(ids) > 2
    assert "\ufffd" in bpe.decode(ids[:1])


def test_deltas_concatenate_to_the_full_decode_and_never_hold_half_chars(bpe):
    for text in TEXTS:
        ids = bpe.encode(text).ids
        deltas = stream_decode(bpe, ids)
        assert "".join(deltas) == text
        assert all("\ufffd" not in d for d in deltas)
        assert sum(1 for d in deltas if d) > 3  # really incremental


def test_special_ids_are_skipped(bpe, glm_tok):
    user = glm_tok.special["<|user|>"]
    ids = bpe.encode("hello world").ids + [user]
    deltas = stream_decode(bpe, ids, skip={user})
    assert "".join(deltas) == "hello world"


def test_reasoning_tags_are_kept_as_text(bpe):
    ids = bpe.encode("<think>a</think>b").ids
    assert "".join(stream_decode(bpe, ids)) == "<think>a</think>b"


def test_dangling_partial_char_is_released_at_flush(bpe):
    ids = bpe.encode("ok 你").ids[:-1]  # cut inside the last character
    d = IncrementalDetokenizer(decode_fn(bpe))
    text = "".join(d.push([i]) for i in ids)
    assert text == "ok "
    assert d.flush() == "\ufffd"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab 你好🙂\n,.")), max_size=40),
       st.integers(min_value=1, max_value=4))
def test_property_any_text_any_group_size(bpe, bpe_text, group):
    ids = bpe.encode(bpe_text).ids
    d = IncrementalDetokenizer(decode_fn(bpe))
    out = [d.push(ids[i:i + group]) for i in range(0, len(ids), group)] + [d.flush()]
    assert "".join(out) == bpe.decode(ids)
    assert all("\ufffd" not in x for x in out[:-1])


def run_stop(pieces, stop):
    m = StopStringMatcher(stop)
    out = [m.push(p) for p in pieces]
    out.append(m.flush())
    return "".join(out), m


def test_stop_string_cuts_and_reports():
    text, m = run_stop(["Hello wor", "ld STOP and more"], ["STOP"])
    assert text == "Hello world " and m.stopped and m.matched == "STOP"


def test_stop_string_split_across_pieces_is_never_shown():
    m = StopStringMatcher(["</answer>"])
    assert m.push("abc</ans") == "abc"  # "</ans" is held back
    assert m.push("wer>tail") == ""
    assert m.stopped


def test_held_back_prefix_released_when_it_does_not_complete():
    m = StopStringMatcher(["</answer>"])
    assert m.push("x </a") == "x "
    assert m.push("b>") == "</ab>"
    assert not m.stopped


def test_earliest_of_several_stop_strings_wins():
    text, m = run_stop(["one TWO three ONE"], ["ONE", "TWO"])
    assert text == "one " and m.matched == "TWO"


def test_held_text_released_at_end_without_stop():
    text, m = run_stop(["value: </ans"], ["</answer>"])
    assert text == "value: </ans" and not m.stopped


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abXY", max_size=30), st.lists(st.integers(0, 30), max_size=8))
def test_property_matches_a_plain_find(text, points):
    stop = ["XY", "aXb"]
    pts = sorted(set(p % (len(text) + 1) for p in points)) + [len(text)]
    pieces, prev = [], 0
    for p in pts:
        pieces.append(text[prev:p])
        prev = p
    got, m = run_stop(pieces, stop)
    idx = [i for i in (text.find(s) for s in stop) if i != -1]
    assert got == (text[:min(idx)] if idx else text)
    assert m.stopped == bool(idx)
