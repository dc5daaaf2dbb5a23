"""AdbDevice: the adb commands each gesture becomes, read back from a stand-in `adb` on PATH
(tests/phone/fake_adb.py; no phone is attached here), and its errors."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from execution.phone.adb import ADB_KEYBOARD, AdbDevice, find_adb
from execution.phone.device import DeviceError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture
def fake_adb(fake_tool):
    return fake_tool("adb")


def test_screen_and_foreground_app(fake_adb):
    dev = AdbDevice(serial="emu-1")
    shot = dev.screenshot()
    assert (shot.width, shot.height) == (720, 1600)
    assert Image.open(io.BytesIO(shot.png)).size == (720, 1600)
    assert dev.current_app() == "settings"
    assert fake_adb() == [["-s", "emu-1", "exec-out", "screencap", "-p"],
                          ["-s", "emu-1", "shell", "dumpsys", "window"]]


def test_gestures_become_input_commands(fake_adb):
    dev = AdbDevice()
    dev.tap(10, 20)
    dev.long_press(5, 6, 3000)
    dev.swipe(1, 2, 3, 4, 1500)
    dev.back()
    dev.home()
    dev.double_tap(7, 8)
    assert fake_adb() == [
        ["shell", "input", "tap", "10", "20"],
        ["shell", "input", "swipe", "5", "6", "5", "6", "3000"],
        ["shell", "input", "swipe", "1", "2", "3", "4", "1500"],
        ["shell", "input", "keyevent", "4"],
        ["shell", "input", "keyevent", "3"],
        ["shell", "input", "tap", "7", "8"], ["shell", "input", "tap", "7", "8"]]


def test_typing_goes_through_adb_keyboard_and_restores_the_users(fake_adb):
    AdbDevice().type_text("你好 Wi-Fi")
    b64 = base64.b64encode("你好 Wi-Fi".encode()).decode()
    assert fake_adb() == [
        ["shell", "settings", "get", "secure", "default_input_method"],
        ["shell", "ime", "list", "-s"],
        ["shell", "ime", "set", ADB_KEYBOARD],
        ["shell", "am", "broadcast", "-a", "ADB_CLEAR_TEXT"],
        ["shell", "am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg", b64],
        ["shell", "ime", "set", "com.google.android.inputmethod.latin/.LatinIME"]]


def test_launch_by_name_package_or_app_table(fake_adb, tmp_path):
    table = tmp_path / "apps.json"
    table.write_text(json.dumps({"My Bank": "com.example.bank"}))
    dev = AdbDevice.with_app_file(None, str(table))
    dev.launch("设置")
    dev.launch("org.example.notes")
    dev.launch("my bank")
    launched = [c[3] for c in fake_adb()]
    assert launched == ["com.android.settings", "org.example.notes", "com.example.bank"]
    with pytest.raises(DeviceError, match="no package known for the app 'Twitter'.*--apps"):
        dev.launch("Twitter")
    with pytest.raises(DeviceError, match="could not launch com.missing"):
        dev.launch("com.missing")


def test_adb_failure_is_a_device_error(fake_adb, monkeypatch):
    monkeypatch.setenv("FAKE_TOOL_FAIL", "1")
    with pytest.raises(DeviceError, match="screencap -p` failed: error: no devices"):
        AdbDevice().screenshot()


def test_without_adb(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeviceError, match="adb is not on PATH"):
        find_adb()
    r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", "Open Settings",
                        "--device", "adb"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == ("autoglm agent: adb is not on PATH: install Android "
                                "platform-tools, or use the simulated phone (--device sim)")


def test_bad_app_table(tmp_path):
    bad = tmp_path / "apps.json"
    bad.write_text("[1, 2]")
    with pytest.raises(DeviceError, match="expected a JSON object of app name -> package"):
        AdbDevice.with_app_file(None, str(bad))
