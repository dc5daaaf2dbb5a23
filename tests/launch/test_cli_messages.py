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
    # Said at once (it said "attached to instance"), and nothing profiled is a failure.
    assert prof.stderr.startswith("no pipeline runs here yet (`autoglm shm ls` lists them); "
                                  "waiting for instance 'nosuch-instance'"), prof.stderr
    assert "no spans came from instance 'nosuch-instance'" in prof.stderr
    assert prof.returncode == 1


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
    assert "instance 'default' (domain" in r.stderr, r.stderr


def _recording(path, cut_short=False):
    from profiler.recording import write_recording
    from profiler.spans import Span

    write_recording(path, [Span("r1", "gateway.receive", "gateway", 7, 1_000, 2_000),
                           Span("r1", "decision.prefill", "decision", 8, 3_000, 9_000)])
    if cut_short:   # a recorder killed while it wrote a line
        with open(path, "a") as f:
            f.write('{"request_id": "r1", "name": "decision.tok')
    return str(path)


def test_profile_names_what_is_wrong_with_its_options_and_files(tmp_path):
    rec = _recording(tmp_path / "r.jsonl")
    for args, message in (
            (("--input", rec, "--record", "/nonexistent/dir/r.jsonl"),
             "autoglm profile: cannot record to /nonexistent/dir/r.jsonl: directory "
             "/nonexistent/dir does not exist"),
            (("--input", rec, "--duration", "3"),
             "autoglm profile: --duration is for a live pipeline, not --input (a recording)"),
            (("--input", rec, "--measure-cost", "100"),
             "autoglm profile: --measure-cost takes none of --input"),
            (("--input", rec, "--base-url", "http://x"),
             "autoglm profile: --base-url and --cost-rounds are for --measure-cost --instance"),
            (("--input", rec, "--percentiles", "0,50"),
             "autoglm profile: --percentiles: 0 is not in (0, 100]"),
            (("--input", "/dev/null"), "autoglm profile: /dev/null: not a file"),
            (("--input", str(tmp_path)), f"autoglm profile: {tmp_path}: not a file")):
        r = cli("profile", *args)
        assert r.returncode == 1 and r.stderr.strip() == message, (args, r.stderr)
    # An unknown request is said before a trace file is written (it was written, then exit 1).
    out = tmp_path / "t.json"
    r = cli("profile", "--input", rec, "--request", "nosuch", "--out", str(out))
    assert r.returncode == 1 and "no spans of request 'nosuch'" in r.stderr and not out.exists()


def test_profile_reads_a_recording_whose_last_line_was_cut_short(tmp_path):
    rec = _recording(tmp_path / "cut.jsonl", cut_short=True)
    r = cli("profile", "--input", rec, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["spans"] == 2
    assert f"{rec}:4: the last line was cut short" in r.stderr


def test_profile_percentiles_reach_the_overhead_report_too(tmp_path):
    rec = _recording(tmp_path / "r.jsonl")
    doc = json.loads(cli("profile", "--input", rec, "--percentiles", "25,75", "--json").stdout)
    assert "p25_ms" in doc["stages"]["gateway.receive"]
    assert {"p25_ms", "p75_ms", "p50_ms", "p99_ms"} <= set(doc["overhead"]["overhead"])


def test_profile_stopped_by_sigterm_still_writes_its_recording_and_trace(tmp_path):
    """`timeout 10 autoglm profile ... --record --out`: SIGTERM ends it as Ctrl-C does (it
    died with an empty recording and no trace file)."""
    import signal
    import time

    rec, out = tmp_path / "r.jsonl", tmp_path / "t.json"
    p = subprocess.Popen([sys.executable, "-m", "launch.cli", "profile", "--instance",
                          "nosuch-instance", "--record", str(rec), "--out", str(out)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "waiting for instance 'nosuch-instance'" in p.stderr.readline()   # reading now
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert "recorded 0 spans to" in err and "Traceback" not in err
    assert json.loads(rec.read_text().splitlines()[0])["autoglm_trace"] == 1


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
