"""Launch spec validation: every error names the file and the field; a bad spec starts nothing."""
from __future__ import annotations

import os

import pytest

from launch.spec import (DEFAULT_SPEC, SpecError, format_cores, load_spec, parse_cores, parse_spec,
                         spare_cores)

from launch_testkit import STAGES, cli, instance_processes, spec_text, unique_instance
from runtime.records import TOKEN_RECORD


def _spec(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _err(tmp_path, text, machine=(0, 1)) -> str:
    p = _spec(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(p, machine_cores=list(machine))
    return str(e.value)


def test_default_spec_is_valid_and_spreads_stages_over_two_cores():
    spec = load_spec(None, machine_cores=[0, 1])
    assert set(spec.stages) == {"gateway", "vision", "audio", "decision"}
    cores = [spec.stages[n].cores for n in spec.stages]
    assert sorted(c for cs in cores for c in cs) == [0, 0, 1, 1]
    # With 4 stages on 2 cores every stage shares with exactly one other.
    assert all(len(st.shares_cores_with) == 1 for st in spec.stages.values())
    assert spec.channels["tokens"].kind == "ring" and spec.channels["tokens"].slot_bytes == TOKEN_RECORD.itemsize


def test_auto_gives_distinct_cores_when_there_are_enough():
    spec = load_spec(DEFAULT_SPEC, machine_cores=list(range(8)))
    cores = [spec.stages[n].cores for n in spec.stages]
    assert len({c for cs in cores for c in cs}) == 4
    assert all(not st.shares_cores_with for st in spec.stages.values())


def test_spare_cores_are_those_no_stage_is_pinned_to_and_reach_every_stage():
    from launch.supervisor import Supervisor

    assert spare_cores(load_spec(DEFAULT_SPEC, machine_cores=[0, 1]), [0, 1]) == []
    spec = load_spec(DEFAULT_SPEC, machine_cores=list(range(8)))
    assert spare_cores(spec, list(range(8))) == [4, 5, 6, 7]
    # The supervisor computes them from its own mask and passes them on the command line.
    sup = Supervisor("spare-test", spec, str(DEFAULT_SPEC))
    sup.spare_cores = [4, 5, 6, 7]
    cmd = sup.command(sup.stages["gateway"])
    assert cmd[cmd.index("--spare-cores") + 1] == "4,5,6,7"
    sup.spare_cores = []
    assert "--spare-cores" not in sup.command(sup.stages["gateway"])


def test_explicit_cores_count_before_auto(tmp_path):
    text = spec_text(STAGES).replace('[stages.gateway]\nmodule = "execution.stage"\ncores = "auto"',
                                     '[stages.gateway]\nmodule = "execution.stage"\ncores = "0-1"')
    spec = load_spec(_spec(tmp_path, text), machine_cores=[0, 1, 2, 3])
    assert spec.stages["gateway"].cores == (0, 1)
    # Auto stages go to the least loaded cores first: 2 and 3 are free, then 0.
    assert [spec.stages[n].cores for n in ("vision", "audio", "decision")] == [(2,), (3,), (0,)]
    assert spec.stages["decision"].shares_cores_with == ("gateway",)


def test_missing_core_error_names_file_field_and_machine(tmp_path):
    text = spec_text(STAGES).replace('[stages.vision]\nmodule = "perception.vision.stage"\ncores = "auto"',
                                     '[stages.vision]\nmodule = "perception.vision.stage"\ncores = [7]')
    msg = _err(tmp_path, text)
    assert msg == (f"{tmp_path / 'spec.toml'}: stages.vision.cores: core 7 does not exist "
                   "(this machine has cores 0-1)")


@pytest.mark.parametrize("edit, needle", [
    (('cores = "auto"\ninputs = ["frames"]', 'corez = "auto"\ninputs = ["frames"]'),
     "stages.vision.corez: unknown field"),
    (('module = "decision.stage"', 'module = "decision.nope"'),
     "stages.decision.module: module 'decision.nope' cannot be found"),
    (('outputs = ["embeddings"]\nparams = { patch', 'outputs = ["embedings"]\nparams = { patch'),
     "stages.vision.outputs[0]: channel 'embedings' is not declared"),
    (('record = "token"', 'record = "tokn"'), "channels.tokens.record: unknown record type 'tokn'"),
    (('record = "token"', 'record = "token"\nslot_bytes = 8'), "channels.tokens.slot_bytes:"),
    (('kind = "ring"', 'kind = "queue"'), "channels.tokens.kind: must be one of pool, ring"),
    (('slots = 256', 'slots = 0'), "channels.tokens.slots: must be > 0, got 0"),
    (('port = 0', 'port = 70000'), "http.port: must be a TCP port 0-65535, got 70000"),
    (('port = 0', 'port = "80"'), "http.port: must be int, got str '80'"),
    (('dead_after_s = 3.0', 'dead_after_s = 0.5'), "supervisor.dead_after_s: must be longer than heartbeat_s"),
    (('slots = 256', 'slots = true'), "channels.tokens.slots: must be int, got a boolean"),
    (('[http]', '[pipeline]\ncpu_latency_us = -5\n[http]'),
     "pipeline.cpu_latency_us: must be a latency in microseconds >= 0, got -5"),
    (('[http]', '[pipeline]\ncpu_latency_us = "low"\n[http]'),
     "pipeline.cpu_latency_us: must be int, got str 'low'"),
    (('params = { max_tokens = 6 }', 'params = { max_tokens = 6, compute = "modle" }'),
     "stages.decision.params.compute: must be one of model, minimal, got 'modle'"),
])
def test_bad_fields_are_named(tmp_path, edit, needle):
    text = spec_text(STAGES)
    assert edit[0] in text
    msg = _err(tmp_path, text.replace(edit[0], edit[1], 1))
    assert msg.startswith(str(tmp_path / "spec.toml") + ": ")
    assert needle in msg


def test_syntax_error_and_missing_file(tmp_path):
    assert "invalid TOML" in _err(tmp_path, "[stages\n")
    with pytest.raises(SpecError, match="nope.toml: file not found"):
        load_spec(tmp_path / "nope.toml")
    assert "stages: the spec has no stages" in _err(tmp_path, "[http]\nport = 1\n")


def test_core_list_notation_round_trips():
    assert parse_cores("0-2,5") == [0, 1, 2, 5]
    assert format_cores([5, 0, 1, 2]) == "0-2,5"
    with pytest.raises(ValueError):
        parse_cores("3-1")
    with pytest.raises(SpecError, match="stages.a.cores: 'x' is not 'auto'"):
        parse_spec({"stages": {"a": {"module": "decision.stage", "cores": "x"}}}, "s.toml", [0])


def test_bad_spec_on_the_cli_starts_nothing(tmp_path):
    instance = unique_instance("bad")
    text = spec_text(STAGES).replace('module = "decision.stage"', 'module = "decision.stage"\ngpu = "tpu"')
    p = _spec(tmp_path, text, "bad.toml")
    r = cli("launch", str(p), "--instance", instance, check=False, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"autoglm launch: {p}: stages.decision.gpu: must be 'none', 'cpu', "
                                "'cuda' or 'cuda:N', got 'tpu'")
    assert r.stdout == ""
    assert not os.path.exists(f"/dev/shm/autoglm-{instance}")
    assert instance_processes(instance) == []


def test_bad_instance_name_is_refused():
    r = cli("launch", "--instance", "a/b", check=False)
    assert r.returncode == 1 and "autoglm launch: invalid instance name 'a/b'" in r.stderr


def test_check_prints_the_plan_without_starting(tmp_path):
    p = _spec(tmp_path, spec_text(STAGES))
    r = cli("launch", str(p), "--check")
    assert f"{p}: OK" in r.stdout and "vision" in r.stdout and "cores" in r.stdout
    machine = sorted(os.sched_getaffinity(0))
    spare = spare_cores(load_spec(p, machine_cores=machine), machine)
    assert (f"spare cores {format_cores(spare)}" if spare else "no spare cores") in r.stdout


def test_default_spec_holds_cpu_wakeup_latency_and_others_do_not(tmp_path):
    assert load_spec(None, machine_cores=[0, 1]).cpu_latency_us == 0
    assert load_spec(_spec(tmp_path, spec_text(STAGES)), machine_cores=[0, 1]).cpu_latency_us is None


def test_cpu_latency_hold_writes_the_request_and_says_why_not(tmp_path):
    """The PM QoS request is an int32 written to the device and kept open; a device that
    cannot be opened gives no hold and a reason (the launcher runs on without it)."""
    import struct

    from launch.cpu_latency import hold

    dev, driver = tmp_path / "cpu_dma_latency", tmp_path / "current_driver"
    dev.write_bytes(b"")
    driver.write_text("haltpoll\n")
    h, why = hold(7, device=str(dev), cpuidle_driver=str(driver))
    assert h is not None and why == ""
    assert struct.unpack("i", dev.read_bytes()) == (7,)
    h.close()
    h.close()  # idempotent
    h, why = hold(0, device=str(tmp_path / "missing"), cpuidle_driver=str(driver))
    assert h is None and "cannot open" in why and "missing" in why
    with pytest.raises(ValueError, match=">= 0"):
        hold(-1, device=str(dev), cpuidle_driver=str(driver))


def test_cpu_latency_is_not_held_without_a_cpuidle_driver(tmp_path):
    """Only a cpuidle driver reads the request: without one (the driver file says none, or
    cpuidle is absent) nothing is asked, and the reason is given."""
    from launch.cpu_latency import hold

    dev, driver = tmp_path / "cpu_dma_latency", tmp_path / "current_driver"
    dev.write_bytes(b"")
    for state in ("none\n", None):
        if state is None:
            driver.unlink()
        else:
            driver.write_text(state)
        h, why = hold(0, device=str(dev), cpuidle_driver=str(driver))
        assert h is None and "no cpuidle driver" in why
        assert dev.read_bytes() == b""   # nothing was written
