"""A real Android phone or emulator, driven through the `adb` command-line tool.

Gestures are `adb shell input ...`; screenshots `adb exec-out screencap -p`; the foreground
app is read from `dumpsys window`. Text goes in through ADB Keyboard
(com.android.adbkeyboard, installed on the phone by the user), the one way to type any
Unicode text over adb: the keyboard is selected for the typing and the user's own keyboard
put back after. Apps are launched by package name, or by a name found in the table of
common apps below or in a JSON file the user passes ({"name": "package"}).
"""
from __future__ import annotations

import base64
import re
import time

from .command import DeviceTool, app_lookup, black_screen, find_tool, png_screenshot, \
    read_app_table
from .device import HOME, DeviceError, Screenshot

ADB_KEYBOARD = "com.android.adbkeyboard/.AdbIME"
# Android packages of common apps; the model names apps as a user would.
COMMON_APPS = {
    "settings": "com.android.settings", "设置": "com.android.settings",
    "chrome": "com.android.chrome", "browser": "com.android.chrome",
    "camera": "com.android.camera2", "相机": "com.android.camera2",
    "clock": "com.google.android.deskclock", "时钟": "com.google.android.deskclock",
    "contacts": "com.android.contacts", "联系人": "com.android.contacts",
    "messages": "com.google.android.apps.messaging", "短信": "com.google.android.apps.messaging",
    "phone": "com.google.android.dialer", "电话": "com.google.android.dialer",
    "files": "com.google.android.documentsui", "文件": "com.google.android.documentsui",
    "calendar": "com.google.android.calendar", "日历": "com.google.android.calendar",
    "maps": "com.google.android.apps.maps", "地图": "com.google.android.apps.maps",
    "play store": "com.android.vending",
    "微信": "com.tencent.mm", "wechat": "com.tencent.mm",
    "支付宝": "com.eg.android.AlipayGphone", "alipay": "com.eg.android.AlipayGphone",
    "淘宝": "com.taobao.taobao", "taobao": "com.taobao.taobao",
    "美团": "com.sankuai.meituan", "meituan": "com.sankuai.meituan",
    "小红书": "com.xingin.xhs", "抖音": "com.ss.android.ugc.aweme", "douyin": "com.ss.android.ugc.aweme",
    "高德地图": "com.autonavi.minimap", "百度地图": "com.baidu.BaiduMap",
    "bilibili": "tv.danmaku.bili", "哔哩哔哩": "tv.danmaku.bili",
}
_LAUNCHERS = ("launcher", "nexuslauncher", "trebuchet", "home")
_FOCUS = re.compile(r"mCurrentFocus=Window\{\S+ \S+ ([^/\s}]+)")


def find_adb() -> str:
    return find_tool("adb", "install Android platform-tools")


class AdbDevice:
    def __init__(self, serial: str | None = None, apps: dict[str, str] | None = None,
                 adb: str | None = None):
        self._adb = DeviceTool([adb or find_adb(), *(["-s", serial] if serial else [])])
        self.apps = app_lookup(COMMON_APPS, apps)
        self._size: tuple[int, int] | None = None

    @classmethod
    def with_app_file(cls, serial: str | None, path: str | None) -> "AdbDevice":
        return cls(serial, read_app_table(path))

    # --- what the agent sees -----------------------------------------------------------------
    def screenshot(self) -> Screenshot:
        shot = png_screenshot(self._run("exec-out", "screencap", "-p", binary=True))
        if shot is None:    # the screen refused capture (payment, banking)
            return black_screen(self._size)
        self._size = shot.width, shot.height
        return shot

    def current_app(self) -> str:
        out = self._run("shell", "dumpsys", "window")
        m = _FOCUS.search(out)
        if m is None:
            return HOME
        package = m.group(1)
        if any(word in package.lower() for word in _LAUNCHERS):
            return HOME
        names = [name for name, p in self.apps.items() if p == package]
        return names[0] if names else package

    # --- gestures ------------------------------------------------------------------------------
    def tap(self, x: int, y: int) -> None:
        self._shell("input", "tap", x, y)

    def double_tap(self, x: int, y: int) -> None:
        self._shell("input", "tap", x, y)
        time.sleep(0.1)
        self._shell("input", "tap", x, y)

    def long_press(self, x: int, y: int, ms: int) -> None:
        self._shell("input", "swipe", x, y, x, y, ms)   # a swipe that stays put is a press

    def swipe(self, x1: int, y1: int, x2: int, y2: int, ms: int) -> None:
        self._shell("input", "swipe", x1, y1, x2, y2, ms)

    def type_text(self, text: str) -> None:
        previous = self._run("shell", "settings", "get", "secure", "default_input_method").strip()
        if ADB_KEYBOARD.split("/")[0] not in self._run("shell", "ime", "list", "-s"):
            raise DeviceError("ADB Keyboard (com.android.adbkeyboard) is not installed on the "
                              "phone: it is how text is typed over adb")
        self._shell("ime", "set", ADB_KEYBOARD)
        try:
            self._shell("am", "broadcast", "-a", "ADB_CLEAR_TEXT")
            self._shell("am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg",
                        base64.b64encode(text.encode()).decode())
        finally:
            if previous and previous != ADB_KEYBOARD and previous != "null":
                self._shell("ime", "set", previous)

    def back(self) -> None:
        self._shell("input", "keyevent", 4)

    def home(self) -> None:
        self._shell("input", "keyevent", 3)

    def launch(self, app: str) -> None:
        package = app if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", app) else \
            self.apps.get(app.strip().casefold())
        if package is None:
            raise DeviceError(f"no package known for the app {app!r}: add it to the app "
                              "table (--apps FILE, a JSON object of name -> package)")
        out = self._run("shell", "monkey", "-p", package, "-c",
                        "android.intent.category.LAUNCHER", "1")
        if "No activities found" in out or "Error" in out:
            raise DeviceError(f"could not launch {package}: {out.strip()[-200:]}")

    # --- helpers -------------------------------------------------------------------------------
    def _shell(self, *args) -> None:
        self._adb.run("shell", *args)

    def _run(self, *args, binary: bool = False):
        return self._adb.run(*args, binary=binary)
