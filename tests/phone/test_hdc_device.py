"""HdcDevice: the hdc commands each gesture becomes, read back from a stand-in `hdc` on PATH
(tests/phone/fake_hdc.py; no HarmonyOS phone is attached here), its errors, and a whole run of
`autoglm agent --device hdc` against a server with scripted replies."""
from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from execution.phone.device import HOME, DeviceError
from execution.phone.hdc import REMOTE_SCREEN, HdcDevice, foreground_bundle, swipe_speed
from tests.phone.conftest import SCREEN_SIZE
from tests.phone.test_agent import scripted_server

REPO = Path(__file__).resolve().parents[2]
SETTINGS = "com.huawei.hmos.settings"


@pytest.fixture
def fake_hdc(fake_tool):
    return fake_tool("hdc")


def test_screen_and_foreground_app(fake_hdc):
    dev = HdcDevice(target="hm-1")
    shot = dev.screenshot()
    assert (shot.width, shot.height) == SCREEN_SIZE
    assert Image.open(io.BytesIO(shot.png)).size == SCREEN_SIZE
    assert dev.current_app() == "settings"
    calls = fake_hdc()
    assert calls[0] == ["-t", "hm-1", "shell",
                        f"rm -f {REMOTE_SCREEN}; uitest screenCap -p {REMOTE_SCREEN}"]
    assert calls[1][:5] == ["-t", "hm-1", "file", "recv", REMOTE_SCREEN]
    assert not Path(calls[1][5]).exists()            # the local copy is not left behind
    assert calls[2] == ["-t", "hm-1", "shell", "aa", "dump", "-l"]


def test_the_launcher_in_front_is_the_home_screen(fake_hdc, monkeypatch):
    monkeypatch.setenv("FAKE_HDC_HOME", "1")
    assert HdcDevice().current_app() == HOME


def test_a_refused_capture_is_a_black_screen_of_the_phones_size(fake_hdc, monkeypatch):
    dev = HdcDevice()
    monkeypatch.setenv("FAKE_HDC_REFUSE", "1")
    first = dev.screenshot()
    assert (first.width, first.height) == (1080, 2400)      # no size known yet
    monkeypatch.delenv("FAKE_HDC_REFUSE")
    dev.screenshot()
    monkeypatch.setenv("FAKE_HDC_REFUSE", "1")
    black = dev.screenshot()
    assert (black.width, black.height) == SCREEN_SIZE
    assert Image.open(io.BytesIO(black.png)).convert("L").getextrema() == (0, 0)


def test_foreground_bundle():
    assert foreground_bundle("") is None
    missions = ("Mission ID #1\n bundle name [a.b]\n state #BACKGROUND\n app state #FOREGROUND\n"
                "Mission ID #2\n bundle name [c.d]\n state #FOREGROUND\n")
    assert foreground_bundle(missions) == "c.d"
    assert foreground_bundle("Mission ID #1\n bundle name [a.b]\n state #BACKGROUND\n") is None


def test_gestures_become_uitest_commands(fake_hdc):
    dev = HdcDevice()
    dev.tap(10, 20)
    dev.double_tap(7, 8)
    dev.long_press(5, 6, 3000)
    dev.swipe(100, 200, 100, 1200, 500)
    dev.back()
    dev.home()
    ui = ["shell", "uitest", "uiInput"]
    assert fake_hdc() == [
        [*ui, "click", "10", "20"], [*ui, "doubleClick", "7", "8"],
        [*ui, "longClick", "5", "6"],
        [*ui, "swipe", "100", "200", "100", "1200", "2000"],     # 1000 px in 0.5 s
        [*ui, "keyEvent", "Back"], [*ui, "keyEvent", "Home"]]


def test_swipe_speed_stays_within_uitests_bounds():
    assert swipe_speed(0, 0, 300, 400, 1000) == 500
    assert swipe_speed(0, 0, 0, 100, 5000) == 200           # slower than UiTest allows
    assert swipe_speed(0, 0, 0, 2000, 10) == 40000          # faster than UiTest allows
    assert swipe_speed(5, 5, 5, 5, 0) == 200


def test_typing_clears_then_types_at_the_tapped_field(fake_hdc):
    dev = HdcDevice()
    with pytest.raises(DeviceError, match="tap the text field first"):
        dev.type_text("hello")
    dev.tap(300, 400)
    fake_hdc()
    text = "it's $HOME\n你好 \"Wi-Fi\""
    dev.type_text(text)
    calls = fake_hdc()
    ui = ["shell", "uitest", "uiInput"]
    assert calls[:2] == [[*ui, "keyEvent", "2072", "2017"], [*ui, "keyEvent", "2055"]]
    assert [c[:6] for c in calls[2:]] == [[*ui, "inputText", "300", "400"],
                                           [*ui, "keyEvent", "2054"],
                                           [*ui, "inputText", "300", "400"]]
    # hdc joins the words into one command line; the phone's shell must get each line back
    # whole, quotes, dollar signs and spaces included.
    typed = [shlex.split(" ".join(c[1:]))[-1] for c in calls if "inputText" in c]
    assert typed == text.split("\n")


def test_launch_by_name_bundle_or_app_table(fake_hdc, tmp_path):
    table = tmp_path / "apps.json"
    table.write_text(json.dumps({"My Bank": "com.example.bank/BankAbility"}))
    dev = HdcDevice.with_app_file(None, str(table))
    dev.launch("设置")
    dev.launch("org.example.notes")
    dev.launch("my bank")
    assert [c[2:] for c in fake_hdc()] == [
        ["start", "-b", SETTINGS, "-a", f"{SETTINGS}.MainAbility"],
        ["start", "-b", "org.example.notes", "-a", "EntryAbility"],
        ["start", "-b", "com.example.bank", "-a", "BankAbility"]]
    with pytest.raises(DeviceError, match="no bundle known for the app 'Twitter'.*--apps"):
        dev.launch("Twitter")
    with pytest.raises(DeviceError, match="could not launch com.missing: error: .* bundle does not exist"):
        dev.launch("com.missing")


def test_hdc_failure_on_stdout_is_a_device_error(fake_hdc, monkeypatch):
    monkeypatch.setenv("FAKE_TOOL_FAIL", "1")
    with pytest.raises(DeviceError, match=r"failed: \[Fail\]ExecuteCommand need connect-key"):
        HdcDevice().screenshot()
    with pytest.raises(DeviceError, match=r"uiInput click 1 2` failed: \[Fail\]"):
        HdcDevice().tap(1, 2)


def test_without_hdc(tmp_path):
    r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", "Open Settings",
                        "--device", "hdc"], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": str(tmp_path)})
    assert r.returncode == 1
    assert r.stderr.strip() == ("autoglm agent: hdc is not on PATH: install the HarmonyOS "
                                "SDK's toolchains (hdc), or use the simulated phone "
                                "(--device sim)")


def test_a_run_on_a_harmonyos_phone(fake_hdc, tmp_path):
    replies = ['do(action="Launch", app="设置")', 'do(action="Tap", element=[500, 500])',
               'do(action="Type", text="Wi-Fi")', 'finish(message="typed")']
    with scripted_server(tmp_path, replies) as (url, received):
        r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", "Type Wi-Fi",
                            "--device", "hdc", "--serial", "hm-1", "--action-delay", "0",
                            "--base-url", url], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        bodies = received()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("agent: hdc device hm-1, server ")
    assert r.stdout.splitlines()[-1] == "finished after 4 steps: typed"
    done = [c[2:] for c in fake_hdc() if c[3:4] in (["uitest"], ["aa"]) and "dump" not in c]
    assert done == [["shell", "aa", "start", "-b", SETTINGS, "-a", f"{SETTINGS}.MainAbility"],
                        ["shell", "uitest", "uiInput", "click", "360", "800"],
                        ["shell", "uitest", "uiInput", "keyEvent", "2072", "2017"],
                        ["shell", "uitest", "uiInput", "keyEvent", "2055"],
                        ["shell", "uitest", "uiInput", "inputText", "360", "800", "Wi-Fi"]]
    # The model was told the foreground app the phone reported.
    assert bodies[0]["messages"][-1]["content"][-1]["text"].endswith('{"current_app": "settings"}')
