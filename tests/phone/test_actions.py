"""Parsing the model's replies into actions: the Open-AutoGLM reply shapes, every action,
and the replies that must be refused with a message saying why."""
from __future__ import annotations

import pytest

from execution.phone.actions import ACTIONS, ActionError, parse_action, split_reply, to_pixels


@pytest.mark.parametrize("reply, thinking, action", [
    ('<think>Home screen.</think><answer>do(action="Launch", app="Settings")</answer>',
     "Home screen.", 'do(action="Launch", app="Settings")'),
    # </answer> dropped by the server, a newline between the blocks
    ('<think>Done now.</think>\n<answer>finish(message="Wi-Fi is on (checked)")',
     "Done now.", 'finish(message="Wi-Fi is on (checked)")'),
    # no tags at all, text after the call
    ('I tap it. do(action="Tap", element=[10, 20]) and then wait',
     "I tap it.", 'do(action="Tap", element=[10, 20])'),
    # finish wins over a do( mentioned in the thinking
    ('<think>no need to do(action="Back")</think><answer>finish(message="ok")</answer>',
     'no need to do(action="Back")', 'finish(message="ok")'),
    ('<think>hmm</think><answer>Back</answer>', "hmm", "Back"),
    ("just words", "", "just words"),
])
def test_split_reply(reply, thinking, action):
    assert split_reply(reply) == (thinking, action)


PARSE_CASES = [
    ('do(action="Launch", app="设置")', "Launch", {"app": "设置"}),
    ('do(action="Tap", element=[500, 120])', "Tap", {"element": (500, 120)}),
    ('do(action="Tap", element=[1, 2], message="Pay 30 yuan")', "Tap",
     {"element": (1, 2), "message": "Pay 30 yuan"}),
    ('do(action="Type", text="hello \\"world\\"")', "Type", {"text": 'hello "world"'}),
    ('do(action="Type_Name", text="Li Lei")', "Type_Name", {"text": "Li Lei"}),
    ('do(action="Swipe", start=[500, 800], end=[500, 200])', "Swipe",
     {"start": (500, 800), "end": (500, 200)}),
    ('do(action="Long Press", element=[3, 4])', "Long Press", {"element": (3, 4)}),
    ('do(action="Double Tap", element=[999, 999])', "Double Tap", {"element": (999, 999)}),
    ('do(action="Back")', "Back", {}),
    ('do(action="Home")', "Home", {}),
    ('do(action="Wait", duration="2 seconds")', "Wait", {"duration": "2 seconds"}),
    ('do(action="Take_over", message="Log in")', "Take_over", {"message": "Log in"}),
    ('do(action="Interact", message="Which one?")', "Interact", {"message": "Which one?"}),
    ('do(action="Note", message="price 30")', "Note", {"message": "price 30"}),
    ('do(action="Call_API", instruction="sum up")', "Call_API", {"instruction": "sum up"}),
    ('finish(message="All done")', "finish", {"message": "All done"}),
]


@pytest.mark.parametrize("text, name, args", PARSE_CASES)
def test_parse_action(text, name, args):
    action = parse_action(text)
    assert (action.name, action.args) == (name, args)
    assert action.is_finish == (name == "finish")


def test_every_known_action_is_covered_above():
    covered = {name for _, name, _ in PARSE_CASES}
    assert set(ACTIONS) <= covered


@pytest.mark.parametrize("text, says", [
    ("", "no action"),
    ("Back", "not a do(...) or finish(...) call"),
    ('do(action="Tap", element=[1, 2]', "not a do(...) or finish(...) call"),
    ('do("Tap", element=[1, 2])', "keyword arguments"),
    ('tap(action="Tap", element=[1, 2])', "keyword arguments"),
    ('do(action="Fly", to=[1, 2])', "unknown action 'Fly'"),
    ('do(action="Tap")', "Tap needs element"),
    ('do(action="Swipe", start=[1, 2])', "Swipe needs end"),
    ('do(action="Back", element=[1, 2])', "Back takes no element"),
    ('do(action="Tap", element=[1200, 5])', "outside 0..999"),
    ('do(action="Tap", element=[-1, 5])', "outside 0..999"),
    ('do(action="Tap", element=[1, 2, 3])', "must be [x, y]"),
    ('do(action="Tap", element="middle")', "must be [x, y]"),
    ('do(action="Tap", element=[True, 2])', "must be [x, y]"),
    # nothing of a reply is ever run: a call in an argument is refused, not evaluated
    ('do(action="Tap", element=__import__("os").getcwd())', "not a literal"),
    ('do(action="Tap", **{"element": [1, 2]})', "not allowed"),
])
def test_parse_action_refuses(text, says):
    with pytest.raises(ActionError) as e:
        parse_action(text)
    assert says in str(e.value)


@pytest.mark.parametrize("duration, seconds", [
    ("2 seconds", 2.0), (3, 3.0), ("0.5", 0.5), (None, 1.0), (1000, 60.0)])
def test_wait_seconds(duration, seconds):
    text = 'do(action="Wait")' if duration is None else f'do(action="Wait", duration={duration!r})'
    assert parse_action(text).wait_seconds() == seconds


def test_wait_without_a_number():
    with pytest.raises(ActionError, match="not a number of seconds"):
        parse_action('do(action="Wait", duration="a while")').wait_seconds()


@pytest.mark.parametrize("point, pixels", [
    ((0, 0), (0, 0)), ((500, 500), (540, 1200)), ((999, 999), (1078, 2397)),
    ((1000, 1000), (1079, 2399))])
def test_to_pixels(point, pixels):
    assert to_pixels(point, 1080, 2400) == pixels
