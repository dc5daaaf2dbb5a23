"""The phone agent's loop: screenshot -> model -> action -> phone, until the model finishes.

Each step sends the current screen to the server, parses the one action of the reply and
performs it on the device (execution/phone/device.py). The run ends when the model calls
finish, when a reply holds no action the agent can perform, when the user declines a
sensitive tap or cannot take over, when the server fails, or after max_steps. A gesture the
device refuses (an unknown app, a tap off-screen) does not end it: the model sees the
unchanged screen at the next step and can try another way.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import prompt
from .actions import Action, ActionError, parse_action, split_reply, to_pixels
from .chat import ChatClient, ChatError
from .device import Device, DeviceError, Screenshot

LONG_PRESS_MS = 3000


@dataclass
class Step:
    index: int
    app: str                     # foreground app when the screenshot was taken
    reply: str                   # the model's whole text
    thinking: str
    action_text: str
    outcome: str                 # "ok", "device refused: ...", or why the run ended here
    first_token_s: float | None
    reply_s: float
    finish_reason: str | None    # the reply's: "length" when max_tokens cut it
    screen_s: float              # taking the screenshot and asking for the foreground app
    action_s: float = 0.0        # doing the gesture (not the settle delay after it)
    action: str | None = None    # the parsed action's name


@dataclass
class RunResult:
    # finished | no_action | max_steps | declined | taken_over | server_error | device_error
    status: str
    message: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    def to_json_obj(self) -> dict:
        return {"status": self.status, "message": self.message,
                "steps": [asdict(s) for s in self.steps]}


@dataclass
class AgentOptions:
    max_steps: int = 50
    action_delay_s: float = 1.0          # after each gesture, for the screen to settle
    system_prompt: str | None = None     # None: prompt.system_prompt() of today
    # Asked before a sensitive tap (the model's message); False stops the run.
    confirm: Callable[[str], bool] = lambda message: False
    # The model hands control to the user (Take_over, Interact); True once the user is done.
    hand_over: Callable[[str], bool] = lambda message: False
    on_step: Callable[[Step], None] = lambda step: None
    on_screen: Callable[[int, Screenshot], None] = lambda index, shot: None
    on_text: Callable[[str], None] | None = None     # each piece of a reply as it streams
    sleep: Callable[[float], None] = time.sleep


class _Stop(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class PhoneAgent:
    def __init__(self, chat: ChatClient, device: Device, options: AgentOptions | None = None):
        self.chat, self.device = chat, device
        self.options = options or AgentOptions()

    def run(self, task: str) -> RunResult:
        opts = self.options
        history = [{"role": "system", "content": opts.system_prompt or prompt.system_prompt()}]
        result = RunResult("max_steps", f"no finish within {opts.max_steps} steps")
        for index in range(1, opts.max_steps + 1):
            t0 = time.monotonic()
            try:
                shot, app = self.device.screenshot(), self.device.current_app()
            except DeviceError as e:
                return RunResult("device_error", f"step {index}: {e}", result.steps)
            screen_s = time.monotonic() - t0
            opts.on_screen(index, shot)
            turn = (prompt.first_turn(shot.png, task, app) if index == 1
                    else prompt.next_turn(shot.png, app))
            try:
                reply = self.chat.complete(history + [turn], opts.on_text)
            except ChatError as e:
                return RunResult("server_error", str(e), result.steps)
            thinking, action_text = split_reply(reply.text)
            step = Step(index, app, reply.text, thinking, action_text, "ok",
                        reply.first_token_s, reply.total_s, reply.finish_reason, screen_s)
            result.steps.append(step)
            history += [prompt.without_image(turn), prompt.assistant_turn(thinking, action_text)]
            try:
                action = parse_action(action_text)
                step.action = action.name
                if action.is_finish:
                    step.outcome = "finished"
                    result.status, result.message = "finished", action.args["message"]
                    return result
                t0 = time.monotonic()
                step.outcome = self._perform(action, shot)
                step.action_s = time.monotonic() - t0
            except ActionError as e:
                cut = " (the reply was cut at max_tokens)" if reply.finish_reason == "length" else ""
                step.outcome = f"no action: {e}{cut}"
                return RunResult("no_action", f"step {index}: {e}{cut}", result.steps)
            except _Stop as stop:
                step.outcome = stop.message
                return RunResult(stop.status, stop.message, result.steps)
            finally:
                opts.on_step(step)
            opts.sleep(opts.action_delay_s)
        return result

    def _perform(self, action: Action, shot: Screenshot) -> str:
        """Does the action on the device; "ok" or what the device refused."""
        dev, opts = self.device, self.options
        px = lambda key="element": to_pixels(action.point(key), shot.width, shot.height)
        name = action.name
        try:
            if name == "Launch":
                dev.launch(action.args["app"])
            elif name == "Tap":
                message = action.args.get("message")
                if message and not opts.confirm(message):
                    raise _Stop("declined", f"the user declined: {message}")
                dev.tap(*px())
            elif name in ("Type", "Type_Name"):
                dev.type_text(str(action.args["text"]))
            elif name == "Swipe":
                (x1, y1), (x2, y2) = px("start"), px("end")
                dev.swipe(x1, y1, x2, y2, swipe_ms(x1, y1, x2, y2, shot.width, shot.height))
            elif name == "Long Press":
                dev.long_press(*px(), LONG_PRESS_MS)
            elif name == "Double Tap":
                dev.double_tap(*px())
            elif name == "Back":
                dev.back()
            elif name == "Home":
                dev.home()
            elif name == "Wait":
                opts.sleep(action.wait_seconds())
            elif name in ("Take_over", "Interact"):
                message = action.args.get("message", "")
                if not opts.hand_over(message):
                    raise _Stop("taken_over", f"the model handed over to the user: {message}")
            # Note and Call_API change nothing on the phone.
        except DeviceError as e:
            return f"device refused: {e}"
        return "ok"


def swipe_ms(x1: int, y1: int, x2: int, y2: int, width: int, height: int) -> int:
    """1 s for a short swipe, up to 2 s for one across the whole screen."""
    frac = math.hypot(x2 - x1, y2 - y1) / math.hypot(width, height)
    return int(1000 + 1000 * min(1.0, frac))
