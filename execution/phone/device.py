"""What the agent drives: a phone that takes screenshots and pixel-coordinate gestures.

Three devices: ``AdbDevice`` (execution/phone/adb.py), a real Android phone or emulator over
adb, ``HdcDevice`` (hdc.py), a HarmonyOS phone over hdc, and ``SimulatedPhone`` here: a small
phone kept in memory (a home screen of apps, an app stack, a text field per app) whose
screenshots are drawn from its state. It lets the whole loop (screenshot -> model -> action
-> new screen) run where no phone is attached, and its ``log`` says exactly which gestures
arrived.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Protocol

HOME = "Home"        # what current_app() says on the home screen


class DeviceError(RuntimeError):
    """The device could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class Screenshot:
    png: bytes
    width: int
    height: int


class Device(Protocol):
    def screenshot(self) -> Screenshot: ...
    def current_app(self) -> str: ...
    def tap(self, x: int, y: int) -> None: ...
    def double_tap(self, x: int, y: int) -> None: ...
    def long_press(self, x: int, y: int, ms: int) -> None: ...
    def swipe(self, x1: int, y1: int, x2: int, y2: int, ms: int) -> None: ...
    def type_text(self, text: str) -> None: ...
    def back(self) -> None: ...
    def home(self) -> None: ...
    def launch(self, app: str) -> None: ...


DEFAULT_APPS = ("Settings", "Messages", "Camera", "Browser", "Maps", "Music", "Clock", "Notes")
_COLUMNS = 4
_STATUS_BAR = 0.04       # of the height
_TITLE_BAR = 0.08        # of the height; its left quarter is the back arrow


@dataclass
class SimulatedPhone:
    width: int = 1080
    height: int = 2400
    apps: tuple[str, ...] = DEFAULT_APPS
    stack: list[str] = field(default_factory=list)        # open apps, the top one shown
    typed: dict[str, str] = field(default_factory=dict)   # app -> its text field's text
    scroll: dict[str, int] = field(default_factory=dict)  # app -> pixels scrolled
    log: list[tuple] = field(default_factory=list)        # every gesture, as received

    # --- what the agent sees ---------------------------------------------------------------
    def current_app(self) -> str:
        return self.stack[-1] if self.stack else HOME

    def icon_boxes(self) -> dict[str, tuple[int, int, int, int]]:
        """Each app's icon on the home screen: (left, top, right, bottom) in pixels."""
        cell = self.width // _COLUMNS
        top0 = int(self.height * (_STATUS_BAR + 0.06))
        boxes = {}
        for i, app in enumerate(self.apps):
            r, c = divmod(i, _COLUMNS)
            left, top = c * cell, top0 + r * int(cell * 1.3)
            pad = cell // 6
            boxes[app] = (left + pad, top + pad, left + cell - pad, top + cell - pad)
        return boxes

    def screenshot(self) -> Screenshot:
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (self.width, self.height), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        font = _font(self.width // 30)
        draw.rectangle((0, 0, self.width, int(self.height * _STATUS_BAR)), fill=(30, 30, 30))
        app = self.current_app()
        if app == HOME:
            for name, box in self.icon_boxes().items():
                draw.rounded_rectangle(box, radius=(box[2] - box[0]) // 5,
                                       fill=_colour(name))
                draw.text(((box[0] + box[2]) // 2, box[3] + 10), name, fill=(20, 20, 20),
                          font=font, anchor="mt")
        else:
            bar = (0, int(self.height * _STATUS_BAR), self.width,
                   int(self.height * (_STATUS_BAR + _TITLE_BAR)))
            draw.rectangle(bar, fill=_colour(app))
            mid = (bar[1] + bar[3]) // 2
            draw.text((self.width // 20, mid), "<", fill=(255, 255, 255), font=font, anchor="lm")
            draw.text((self.width // 2, mid), app, fill=(255, 255, 255), font=font, anchor="mm")
            field_top = bar[3] + self.height // 40
            draw.rectangle((self.width // 20, field_top, self.width * 19 // 20,
                            field_top + self.height // 20), outline=(120, 120, 120), width=3)
            draw.text((self.width // 12, field_top + self.height // 40),
                      self.typed.get(app, ""), fill=(20, 20, 20), font=font, anchor="lm")
            draw.text((self.width // 12, self.height * 3 // 10),
                      f"scrolled {self.scroll.get(app, 0)} px", fill=(90, 90, 90), font=font)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return Screenshot(buf.getvalue(), self.width, self.height)

    # --- gestures ------------------------------------------------------------------------------
    def tap(self, x: int, y: int) -> None:
        self._check_on_screen(x, y)
        self.log.append(("tap", x, y))
        app = self.current_app()
        if app == HOME:
            for name, (l, t, r, b) in self.icon_boxes().items():
                if l <= x <= r and t <= y <= b:
                    self.stack.append(name)
                    return
        elif self._on_back_arrow(x, y):
            self.stack.pop()

    def double_tap(self, x: int, y: int) -> None:
        self._check_on_screen(x, y)
        self.log.append(("double_tap", x, y))

    def long_press(self, x: int, y: int, ms: int) -> None:
        self._check_on_screen(x, y)
        self.log.append(("long_press", x, y, ms))

    def swipe(self, x1: int, y1: int, x2: int, y2: int, ms: int) -> None:
        self._check_on_screen(x1, y1)
        self._check_on_screen(x2, y2)
        self.log.append(("swipe", x1, y1, x2, y2, ms))
        app = self.current_app()
        if app != HOME:     # swiping up scrolls the content down
            self.scroll[app] = max(0, self.scroll.get(app, 0) + (y1 - y2))

    def type_text(self, text: str) -> None:
        self.log.append(("type", text))
        app = self.current_app()
        if app == HOME:
            raise DeviceError("no text field on the home screen: open an app first")
        self.typed[app] = text          # as over adb: the field is cleared, then typed into

    def back(self) -> None:
        self.log.append(("back",))
        if self.stack:
            self.stack.pop()

    def home(self) -> None:
        self.log.append(("home",))
        self.stack.clear()

    def launch(self, app: str) -> None:
        self.log.append(("launch", app))
        match = next((a for a in self.apps if a.casefold() == app.strip().casefold()), None)
        if match is None:
            raise DeviceError(f"no app named {app!r} on this phone "
                              f"(it has {', '.join(self.apps)})")
        self.stack.append(match)

    # --- helpers -------------------------------------------------------------------------------
    def _on_back_arrow(self, x: int, y: int) -> bool:
        top = self.height * _STATUS_BAR
        return x < self.width // 4 and top <= y <= top + self.height * _TITLE_BAR

    def _check_on_screen(self, x: int, y: int) -> None:
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise DeviceError(f"({x}, {y}) is off the {self.width}x{self.height} screen")


def _colour(name: str) -> tuple[int, int, int]:
    h = sum(ord(c) * 31 ** i for i, c in enumerate(name)) & 0xFFFFFF
    return 60 + (h & 0x7F), 60 + ((h >> 8) & 0x7F), 60 + ((h >> 16) & 0x7F)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)      # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()
