"""A HarmonyOS phone, driven through the `hdc` command-line tool (as Open-AutoGLM drives one).

Gestures are UiTest's `uitest uiInput` commands (click, doubleClick, longClick, swipe,
keyEvent, inputText); screenshots `uitest screenCap` into a file on the phone, fetched with
`hdc file recv`; the foreground app is the FOREGROUND mission of `aa dump -l`; apps start with
`aa start -b BUNDLE -a ABILITY`. hdc reports most failures on stdout with a "[Fail]" prefix and
exit status 0, so that prefix counts as a failure too.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import tempfile

from .command import DeviceTool, app_lookup, black_screen, find_tool, png_screenshot, \
    read_app_table
from .device import HOME, DeviceError, Screenshot

REMOTE_SCREEN = "/data/local/tmp/autoglm_screen.png"
DEFAULT_ABILITY = "EntryAbility"
# uitest swipes take a speed in px/s within these bounds, not a duration.
MIN_SWIPE_PX_S, MAX_SWIPE_PX_S = 200, 40000
KEY_ENTER, KEY_DELETE, KEY_CTRL, KEY_A = 2054, 2055, 2072, 2017
# HarmonyOS bundles of common apps, "bundle" or "bundle/ability" where the app's main ability is
# not EntryAbility; the model names apps as a user would.
COMMON_APPS = {
    "settings": "com.huawei.hmos.settings/com.huawei.hmos.settings.MainAbility",
    "设置": "com.huawei.hmos.settings/com.huawei.hmos.settings.MainAbility",
    "camera": "com.huawei.hmos.camera/com.huawei.hmos.camera.MainAbility",
    "相机": "com.huawei.hmos.camera/com.huawei.hmos.camera.MainAbility",
    "browser": "com.huawei.hmos.browser/MainAbility",
    "浏览器": "com.huawei.hmos.browser/MainAbility",
    "calendar": "com.huawei.hmos.calendar/MainAbility",
    "日历": "com.huawei.hmos.calendar/MainAbility",
    "notes": "com.huawei.hmos.notepad/MainAbility", "备忘录": "com.huawei.hmos.notepad/MainAbility",
    "gallery": "com.huawei.hmos.photos/MainAbility", "图库": "com.huawei.hmos.photos/MainAbility",
    "files": "com.huawei.hmos.filemanager/MainAbility",
    "文件管理": "com.huawei.hmos.filemanager/MainAbility",
    "contacts": "com.ohos.contacts/com.ohos.contacts.MainAbility",
    "联系人": "com.ohos.contacts/com.ohos.contacts.MainAbility",
    "messages": "com.ohos.mms/com.ohos.mms.MainAbility",
    "信息": "com.ohos.mms/com.ohos.mms.MainAbility",
    "app gallery": "com.huawei.hmsapp.appgallery/MainAbility",
    "应用市场": "com.huawei.hmsapp.appgallery/MainAbility",
    "微信": "com.tencent.wechat", "wechat": "com.tencent.wechat",
    "支付宝": "com.alipay.mobile.client", "alipay": "com.alipay.mobile.client",
    "淘宝": "com.taobao.taobao4hmos/Taobao_mainAbility",
    "美团": "com.sankuai.hmeituan", "小红书": "com.xingin.xhs_hos",
    "抖音": "com.ss.hm.ugc.aweme/MainAbility", "bilibili": "yylx.danmaku.bili",
    "高德地图": "com.amap.hmapp", "百度地图": "com.baidu.hmmap",
}
_LAUNCHERS = ("launcher", "sceneboard")
_BUNDLE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+")


def find_hdc() -> str:
    return find_tool("hdc", "install the HarmonyOS SDK's toolchains (hdc)")


class _Hdc(DeviceTool):
    def failed(self, output: str) -> bool:
        return "[Fail]" in output


class HdcDevice:
    def __init__(self, target: str | None = None, apps: dict[str, str] | None = None,
                 hdc: str | None = None):
        self._hdc = _Hdc([hdc or find_hdc(), *(["-t", target] if target else [])])
        self.apps = app_lookup(COMMON_APPS, apps)
        self._size: tuple[int, int] | None = None
        self._last_tap: tuple[int, int] | None = None   # inputText types where it points

    @classmethod
    def with_app_file(cls, target: str | None, path: str | None) -> "HdcDevice":
        return cls(target, read_app_table(path))

    # --- what the agent sees -----------------------------------------------------------------
    def screenshot(self) -> Screenshot:
        # The old file goes first, so that a capture the screen refuses is not answered with
        # the previous screen.
        self._shell(f"rm -f {REMOTE_SCREEN}; uitest screenCap -p {REMOTE_SCREEN}")
        fd, local = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        try:
            self._hdc.run("file", "recv", REMOTE_SCREEN, local)
            with open(local, "rb") as f:
                shot = png_screenshot(f.read())
        except DeviceError:
            shot = None     # no file to fetch: the screen refused capture (payment, banking)
        finally:
            os.unlink(local)
        if shot is None:
            return black_screen(self._size)
        self._size = shot.width, shot.height
        return shot

    def current_app(self) -> str:
        bundle = foreground_bundle(self._shell("aa", "dump", "-l"))
        if bundle is None or any(word in bundle.lower() for word in _LAUNCHERS):
            return HOME
        names = [name for name, entry in self.apps.items() if entry.split("/")[0] == bundle]
        return names[0] if names else bundle

    # --- gestures ------------------------------------------------------------------------------
    def tap(self, x: int, y: int) -> None:
        self._input("click", x, y)
        self._last_tap = x, y

    def double_tap(self, x: int, y: int) -> None:
        self._input("doubleClick", x, y)
        self._last_tap = x, y

    def long_press(self, x: int, y: int, ms: int) -> None:
        self._input("longClick", x, y)      # UiTest's long click has its own, fixed length

    def swipe(self, x1: int, y1: int, x2: int, y2: int, ms: int) -> None:
        self._input("swipe", x1, y1, x2, y2, swipe_speed(x1, y1, x2, y2, ms))

    def type_text(self, text: str) -> None:
        if self._last_tap is None:
            raise DeviceError("hdc types into the field at the last tap: tap the text field first")
        x, y = self._last_tap
        self._input("keyEvent", KEY_CTRL, KEY_A)     # the field is cleared, as over adb
        self._input("keyEvent", KEY_DELETE)
        for i, line in enumerate(text.split("\n")):
            if i:
                self._input("keyEvent", KEY_ENTER)
            if line:
                self._input("inputText", x, y, shlex.quote(line))

    def back(self) -> None:
        self._input("keyEvent", "Back")

    def home(self) -> None:
        self._input("keyEvent", "Home")

    def launch(self, app: str) -> None:
        entry = app if _BUNDLE.fullmatch(app) else self.apps.get(app.strip().casefold())
        if entry is None:
            raise DeviceError(f"no bundle known for the app {app!r}: add it to the app table "
                              "(--apps FILE, a JSON object of name -> bundle or bundle/ability)")
        bundle, _, ability = entry.partition("/")
        out = self._shell("aa", "start", "-b", bundle, "-a", ability or DEFAULT_ABILITY)
        if "successfully" not in out:
            raise DeviceError(f"could not launch {entry}: {' '.join(out.split())[-200:]}")

    # --- helpers -------------------------------------------------------------------------------
    def _input(self, *args) -> None:
        self._shell("uitest", "uiInput", *args)

    def _shell(self, *args) -> str:
        # hdc joins the words into one command line for the phone's shell.
        return self._hdc.run("shell", *args)


def swipe_speed(x1: int, y1: int, x2: int, y2: int, ms: int) -> int:
    """The px/s that covers the swipe in about ``ms`` milliseconds, within UiTest's bounds."""
    speed = math.hypot(x2 - x1, y2 - y1) * 1000 / max(ms, 1)
    return int(min(max(speed, MIN_SWIPE_PX_S), MAX_SWIPE_PX_S))


def foreground_bundle(missions: str) -> str | None:
    """The bundle of the FOREGROUND mission in `aa dump -l` output (blocks that begin with
    "Mission ID", each with a "bundle name [..]" and a "state #.." line)."""
    bundle = None
    for line in missions.splitlines():
        line = line.strip()
        if line.startswith("Mission ID"):
            bundle = None
        elif line.startswith("bundle name ["):
            bundle = line[len("bundle name ["):].rstrip("]")
        elif line.startswith("state #") and line[len("state #"):].upper() == "FOREGROUND":
            if bundle:
                return bundle
    return None
