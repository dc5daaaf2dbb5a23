"""A stand-in phone tool (tests/phone/fake_adb.py, fake_hdc.py) on PATH: no phone is attached
here, so the devices' command lines are read back from what the stand-in recorded."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
SCREEN_SIZE = (720, 1600)


@pytest.fixture
def fake_tool(tmp_path, monkeypatch):
    """fake_tool("adb") puts tests/phone/fake_adb.py on PATH as `adb` and returns a function
    that gives (and forgets) the calls recorded since it was last called."""
    def install(name: str):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / f'fake_{name}.py'} \"$@\"\n")
        tool.chmod(0o755)
        png = tmp_path / "screen.png"
        Image.new("RGBA", SCREEN_SIZE, (10, 20, 30, 255)).save(png)
        log = tmp_path / f"{name}.log"
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_TOOL_LOG", str(log))
        monkeypatch.setenv("FAKE_TOOL_PNG", str(png))

        def calls():
            lines = log.read_text().splitlines() if log.exists() else []
            log.write_text("")
            return [json.loads(line) for line in lines]
        return calls
    return install
