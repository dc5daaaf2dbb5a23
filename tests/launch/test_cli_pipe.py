"""`autoglm ... | head -1`: a reader that goes away ends the command quietly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_closed_pipe_ends_the_command_without_a_traceback():
    p = subprocess.Popen([sys.executable, "-m", "launch.cli", "shm", "ls", "--json"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                       # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""
