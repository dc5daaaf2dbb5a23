"""What the two real devices share: their command-line tool (adb, hdc) run once per gesture,
the user's app table, and the black screen sent where a screen refuses capture."""
from __future__ import annotations

import io
import json
import shutil
import subprocess

from .device import DeviceError, Screenshot

COMMAND_TIMEOUT_S = 20


def find_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DeviceError(f"{name} is not on PATH: {install_hint}, "
                          "or use the simulated phone (--device sim)")
    return path


class DeviceTool:
    """One device's command line: ``run(*args)`` is ``tool [device flag] args``, its output
    returned; a non-zero exit, a timeout, or an output that ``failed(output)`` recognises is a
    DeviceError quoting the command and the tool's own words."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def failed(self, output: str) -> bool:
        return False

    def run(self, *args, binary: bool = False):
        cmd = [*self.argv, *(str(a) for a in args)]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"`{' '.join(cmd)}` took over {COMMAND_TIMEOUT_S} s") from None
        out = done.stdout.decode(errors="replace")
        if done.returncode != 0 or (not binary and self.failed(out)):
            why = (done.stderr.decode(errors="replace").strip() or out.strip()
                   or f"exit status {done.returncode}")
            raise DeviceError(f"`{' '.join(cmd)}` failed: {why[-300:]}")
        return done.stdout if binary else out


def read_app_table(path: str | None) -> dict[str, str] | None:
    """The user's --apps file: a JSON object of app name -> package (adb) or bundle (hdc)."""
    if not path:
        return None
    try:
        apps = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise DeviceError(f"cannot read the app table {path}: {e}") from None
    if not (isinstance(apps, dict) and all(isinstance(v, str) for v in apps.values())):
        raise DeviceError(f"{path}: expected a JSON object of app name -> package (adb) or "
                          "bundle (hdc)")
    return apps


def app_lookup(common: dict[str, str], user: dict[str, str] | None) -> dict[str, str]:
    """The built-in table with the user's entries over it, keyed by case-folded name."""
    return {k.casefold(): v for k, v in {**common, **(user or {})}.items()}


def black_screen(size: tuple[int, int] | None) -> Screenshot:
    """What the Open-AutoGLM client sends where the phone refuses capture (payment and banking
    screens): a black screen of the phone's size (1080x2400 until one is known)."""
    from PIL import Image

    w, h = size or (1080, 2400)
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return Screenshot(buf.getvalue(), w, h)


def png_screenshot(png: bytes) -> Screenshot | None:
    """A screenshot from the phone's PNG bytes; None where they are not a PNG."""
    if not png.startswith(b"\x89PNG"):
        return None
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return Screenshot(png, *img.size)
