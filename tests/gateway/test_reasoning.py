from hypothesis import given, settings, strategies as st

from execution.reasoning import ReasoningSplitter, ReasoningStepCounter


def run(pieces, **kw):
    s = ReasoningSplitter(**kw)
    r, c = [], []
    for p in pieces:
        a, b = s.push(p)
        r.append(a)
        c.append(b)
    a, b = s.flush()
    return "".join(r) + a, "".join(c) + b


def cut(text, points):
    pts = sorted(set(p % (len(text) + 1) for p in points))
    out, prev = [], 0
    for p in pts + [len(text)]:
        out.append(text[prev:p])
        prev = p
    return out


FULL = "<think>Look at the screen.\nThe button is on the left.</think>\n<answer>do(action=\"Tap\")</answer>"


def test_whole_text_split():
    r, c = run([FULL])
    assert r == "Look at the screen.\nThe button is on the left."
    assert c == "\n<answer>do(action=\"Tap\")</answer>"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_chunking_gives_the_same_split(points):
    assert run(cut(FULL, points)) == run([FULL])


def test_tags_split_character_by_character():
    assert run(list(FULL)) == run([FULL])


def test_prompt_already_opened_think():
    r, c = run(["I should tap.</th", "ink>\n<answer>x</answer>"], start_in_reasoning=True)
    assert r == "I should tap."
    assert c == "\n<answer>x</answer>"


def test_never_closed_is_all_reasoning():
    r, c = run(["<think>still thinking", " and thinking </thi"])
    assert r == "still thinking and thinking </thi"  # held tail released by flush
    assert c == ""


def test_no_think_tag_is_all_content():
    assert run(["Hello", " there"]) == ("", "Hello there")


def test_partial_open_tag_that_turns_out_not_to_be_a_tag():
    assert run(["<thi", "s is <b>"]) == ("", "<this is <b>")


def test_leading_whitespace_before_think():
    assert run(["\n ", "<think>a</think>b"]) == ("a", "b")


def test_step_counter_counts_non_blank_lines():
    c = ReasoningStepCounter(3)
    assert not c.push("first step\n\n  \nsecond")
    assert c.steps == 1
    assert not c.push(" continues\n")
    assert c.steps == 2
    assert c.push("third\n")
    assert c.steps == 3 and c.limit_reached


def test_step_counter_without_limit_never_fires():
    c = ReasoningStepCounter(None)
    assert not c.push("a\nb\nc\n" * 10)
    assert c.steps == 30
