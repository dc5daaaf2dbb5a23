"""What the tools say to a user who gets something wrong: a reader that goes away (`| head -1`),
an instance that is not running, a negative duration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_a_closed_pipe_ends_the_command_without_a_traceback():
    p = subprocess.Popen([sys.executable, "-m", "launch.cli", "shm", "ls", "--json"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                       # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""


def test_tools_say_when_no_such_instance_runs():
    topics = cli("topic", "list", "--instance", "nosuch-instance")
    assert topics.returncode == 0 and "autoglm/request" in topics.stdout     # the types still
    assert ("no pipeline instance 'nosuch-instance' is running here (is it launched?"
            in topics.stderr)
    prof = cli("profile", "--instance", "nosuch-instance", "--duration", "0.5")
    assert "no spans came from instance 'nosuch-instance'" in prof.stderr


def test_durations_must_be_positive_and_instance_names_as_launch_takes_them():
    for args, message in ((("topic", "echo", "request", "--timeout", "-1"),
                           "autoglm topic: --timeout must be > 0 seconds"),
                          (("profile", "--instance", "x", "--duration", "-1"),
                           "autoglm profile: --duration must be positive"),
                          (("profile", "--instance", "a.b", "--duration", "1"),
                           "autoglm profile: invalid instance name 'a.b'")):
        r = cli(*args)
        assert r.returncode == 1 and message in r.stderr, r.stderr


def test_profile_attaches_to_the_default_instance_as_the_other_tools():
    r = cli("profile", "--duration", "0.5")
    assert "attached to instance 'default'" in r.stderr, r.stderr


def test_shm_ls_names_the_command_that_reclaims_a_dead_instance(tmp_path):
    env = {"AUTOGLM_SHM_ROOT": str(tmp_path)}
    dead = tmp_path / "autoglm-crashed1"
    dead.mkdir()
    (dead / "instance.json").write_text(json.dumps({"pid": 2**22 + 7, "start": 1,
                                                    "created": 0.0}))
    listed = cli("shm", "ls", env=env)
    hint = listed.stdout.split("reclaim with `")[1].split("`")[0]
    assert hint == "autoglm shm clean crashed1"
    assert cli(*hint.split()[1:], env=env).returncode == 0 and not dead.exists()
