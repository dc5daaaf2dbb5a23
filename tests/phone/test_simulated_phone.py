"""The simulated phone: what its screen shows follows the gestures it was given."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from execution.phone.device import HOME, DeviceError, SimulatedPhone


def centre(box):
    return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2


def pixels(shot):
    img = Image.open(io.BytesIO(shot.png))
    return img.size, img.tobytes()


def test_home_screen_then_tap_an_icon_then_back_arrow():
    phone = SimulatedPhone()
    home = phone.screenshot()
    assert (home.width, home.height) == (1080, 2400) and home.png.startswith(b"\x89PNG")
    assert phone.current_app() == HOME
    phone.tap(*centre(phone.icon_boxes()["Camera"]))
    assert phone.current_app() == "Camera"
    camera = phone.screenshot()
    assert pixels(camera)[0] == (1080, 2400) and pixels(camera)[1] != pixels(home)[1]
    phone.tap(20, 5)                      # the status bar: nothing happens
    assert phone.current_app() == "Camera"
    phone.tap(54, 192)                    # the back arrow of the title bar
    assert phone.current_app() == HOME
    assert pixels(phone.screenshot()) == pixels(home)
    assert phone.log == [("tap", *centre(phone.icon_boxes()["Camera"])), ("tap", 20, 5),
                         ("tap", 54, 192)]


def test_launch_type_swipe_back_home():
    phone = SimulatedPhone()
    phone.launch("settings")              # names match whatever their case
    phone.type_text("Wi-Fi")
    before = pixels(phone.screenshot())
    phone.type_text("Bluetooth")          # typing replaces the field's text, as over adb
    assert phone.typed == {"Settings": "Bluetooth"}
    assert pixels(phone.screenshot()) != before
    phone.swipe(500, 1900, 500, 400, 1500)
    assert phone.scroll == {"Settings": 1500}
    phone.launch("Notes")
    phone.back()
    assert phone.current_app() == "Settings"
    phone.home()
    assert phone.current_app() == HOME


def test_refusals_name_the_problem():
    phone = SimulatedPhone()
    with pytest.raises(DeviceError, match="no app named 'Twitter'.*Settings"):
        phone.launch("Twitter")
    with pytest.raises(DeviceError, match="no text field on the home screen"):
        phone.type_text("x")
    with pytest.raises(DeviceError, match=r"\(1080, 5\) is off the 1080x2400 screen"):
        phone.tap(1080, 5)
    assert phone.current_app() == HOME
