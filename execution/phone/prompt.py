"""The phone agent's conversation: system prompt, per-step user turns, stored replies.

The shape follows the Open-AutoGLM client, which the model was tuned with: the first user
turn is [screenshot, task + the foreground app as JSON], later ones [screenshot, "** Screen
Info **" + that JSON]; once a reply is in, its screenshot is dropped from the history (so every
request carries one image) and the reply is kept as <think>..</think><answer>..</answer>.
The system prompt below is this project's own wording; with the real weights, pass the
prompt the model was tuned with (`autoglm agent --system-prompt FILE`) for its best answers.
"""
from __future__ import annotations

import base64
import json
from datetime import date

SYSTEM_PROMPT = """Today is {today}. You operate an Android phone for the user, one action at \
a time. Each turn shows you the current screen and the app in the foreground.

Reply with your reasoning, then exactly one action:
<think>what you see, and what to do next</think>
<answer>the action</answer>

Actions. A point is [x, y], each from 0 to 999, measured from the screen's top-left corner.
do(action="Launch", app="name")          open an app by its name
do(action="Tap", element=[x, y])         tap; add message="why" to a tap that pays, sends or \
deletes something, and the user confirms it first
do(action="Type", text="text")           type into the focused field, replacing its text
do(action="Swipe", start=[x, y], end=[x, y])
do(action="Long Press", element=[x, y])
do(action="Double Tap", element=[x, y])
do(action="Back")                        the back button
do(action="Home")                        the home screen
do(action="Wait", duration="2 seconds")  let the screen settle
do(action="Take_over", message="why")    the user acts (a login, a captcha, a payment)
finish(message="what was done")          the task is done, or cannot be done

Rules:
- Check that your previous action had its effect before going on; if it did not, try \
another way.
- Open apps with Launch rather than by looking for their icons.
- Swipe to find what the screen does not show.
- Call finish as soon as the task is done."""


def system_prompt(today: date | None = None) -> str:
    return SYSTEM_PROMPT.format(today=(today or date.today()).isoformat())


def screen_info(app: str) -> str:
    return json.dumps({"current_app": app}, ensure_ascii=False)


def user_turn(png: bytes, text: str) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": text}]}


def first_turn(png: bytes, task: str, app: str) -> dict:
    return user_turn(png, f"{task}\n\n{screen_info(app)}")


def next_turn(png: bytes, app: str) -> dict:
    return user_turn(png, f"** Screen Info **\n\n{screen_info(app)}")


def without_image(turn: dict) -> dict:
    """The turn as kept in the history once answered: its text parts only."""
    return {"role": turn["role"],
            "content": [p for p in turn["content"] if p.get("type") == "text"]}


def assistant_turn(thinking: str, action_text: str) -> dict:
    return {"role": "assistant", "content": f"<think>{thinking}</think><answer>{action_text}</answer>"}
