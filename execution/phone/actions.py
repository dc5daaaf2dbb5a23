"""The phone agent's replies: split into thinking and action, and the action parsed.

AutoGLM-Phone answers ``<think>{thinking}</think><answer>{action}</answer>``, where the action
is one call: ``do(action="Tap", element=[500, 120])`` or ``finish(message="Done")``. Points
are relative, 0..999 on each axis from the top-left corner, whatever the screen's size.

The action is parsed as a Python expression's syntax tree and only literal arguments are
taken (``ast.literal_eval``), so a reply can never run code. Servers differ in whether they
keep ``</answer>`` or leak tags into the text; the split follows the Open-AutoGLM client's
order (``finish(message=``, else ``do(action=``, else the ``<answer>`` tags, else the whole
text), so a reply that client understands is understood here the same way.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

# Action name -> (required arguments, optional arguments). Names as the model writes them.
ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Launch": (("app",), ()),
    "Tap": (("element",), ("message",)),          # message: a sensitive tap, to confirm
    "Type": (("text",), ()),
    "Type_Name": (("text",), ()),
    "Swipe": (("start", "end"), ()),
    "Long Press": (("element",), ()),
    "Double Tap": (("element",), ()),
    "Back": ((), ()),
    "Home": ((), ()),
    "Wait": ((), ("duration",)),
    "Take_over": ((), ("message",)),              # the user takes over (a login, a captcha)
    "Interact": ((), ("message",)),               # the user chooses between options
    "Note": ((), ("message",)),
    "Call_API": ((), ("instruction",)),
}
POINT_ARGS = ("element", "start", "end")
RELATIVE_MAX = 999          # relative coordinates run 0..999 (1000 = the far edge, tolerated)
DEFAULT_WAIT_S = 1.0
MAX_WAIT_S = 60.0


class ActionError(ValueError):
    """A reply that holds no action this agent can perform; the message says why."""


@dataclass(frozen=True)
class Action:
    name: str                      # "Tap", ..., or "finish"
    args: dict = field(default_factory=dict)

    @property
    def is_finish(self) -> bool:
        return self.name == "finish"

    def point(self, key: str = "element") -> tuple[int, int]:
        return self.args[key]

    def wait_seconds(self) -> float:
        """Wait's duration: a number or "3 seconds" (as the model writes it), capped."""
        raw = self.args.get("duration", DEFAULT_WAIT_S)
        m = re.match(r"\s*([0-9]*\.?[0-9]+)", str(raw))
        if m is None:
            raise ActionError(f"Wait: duration {raw!r} is not a number of seconds")
        return min(float(m.group(1)), MAX_WAIT_S)


def split_reply(text: str) -> tuple[str, str]:
    """(thinking, action text) of a whole reply."""
    for marker in ("finish(message=", "do(action="):
        at = text.find(marker)
        if at >= 0:
            return _strip_thinking(text[:at]), _cut_call(text[at:])
    m = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    if m:
        return _strip_thinking(text[:m.start()]), m.group(1).strip()
    return "", text.strip()


def _strip_thinking(text: str) -> str:
    return re.sub(r"</?(think|answer)>", "", text).strip()


def _cut_call(text: str) -> str:
    """The call up to the closing parenthesis that completes it (text after it, such as a
    leaked </answer>, is dropped); the whole text when no prefix is a whole expression."""
    for i, ch in enumerate(text):
        if ch == ")":
            try:
                ast.parse(text[:i + 1], mode="eval")
            except SyntaxError:
                continue
            return text[:i + 1]
    return text.strip()


def parse_action(text: str) -> Action:
    """The Action of ``do(action=..., ...)`` or ``finish(message=...)``; ActionError when the
    text is not such a call, names an unknown action, or its arguments are not valid."""
    text = text.strip()
    if not text:
        raise ActionError("the reply holds no action")
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ActionError(f"not a do(...) or finish(...) call: {_short(text)}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id in ("do", "finish") and not call.args):
        raise ActionError(f"not a do(...) or finish(...) call with keyword arguments: "
                          f"{_short(text)}")
    args = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ActionError(f"**arguments are not allowed: {_short(text)}")
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise ActionError(f"argument {kw.arg!r} is not a literal: {_short(text)}") from None
    if call.func.id == "finish":
        return Action("finish", {"message": str(args.get("message", ""))})
    name = args.pop("action", None)
    if name not in ACTIONS:
        raise ActionError(f"unknown action {name!r}; known: {', '.join(ACTIONS)}")
    required, optional = ACTIONS[name]
    missing = [a for a in required if a not in args]
    if missing:
        raise ActionError(f"{name} needs {', '.join(missing)}: {_short(text)}")
    extra = sorted(set(args) - set(required) - set(optional))
    if extra:
        raise ActionError(f"{name} takes no {', '.join(extra)}: {_short(text)}")
    for key in POINT_ARGS:
        if key in args:
            args[key] = _relative_point(name, key, args[key])
    return Action(name, args)


def _relative_point(name: str, key: str, value) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ActionError(f"{name}: {key} must be [x, y], got {value!r}")
    if not all(0 <= v <= RELATIVE_MAX + 1 for v in value):
        raise ActionError(f"{name}: {key} {list(value)} is outside 0..{RELATIVE_MAX}")
    return int(value[0]), int(value[1])


def to_pixels(point: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """A relative point (0..999) on a width x height screen, in pixels (clamped on-screen)."""
    x = min(int(point[0] / 1000 * width), width - 1)
    y = min(int(point[1] / 1000 * height), height - 1)
    return x, y


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
