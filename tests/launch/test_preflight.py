"""What `autoglm launch` refuses before any process starts, and `--check` with it: a port in
use, a host that is not this machine's, a directory that is not a model, bad flags. Each is one
line on stderr and exit status 1 (they used to start stages that crash-looped, and a launcher
that never exited)."""
from __future__ import annotations

import json
import os
import socket

import pytest

from launch_testkit import GATEWAY_SPEC, cli, instance_processes, unique_instance

# The least config.json modelcore.config accepts (every other value has a default).
GLM_CONFIG = {"architectures": ["Glm4vForConditionalGeneration"], "model_type": "glm4v"}


@pytest.fixture
def gateway_spec(tmp_path):
    p = tmp_path / "gateway.toml"
    p.write_text(GATEWAY_SPEC)
    return p


def _refused(*args) -> str:
    """Launch (or --check) that must be refused at once: its one stderr line; nothing left."""
    instance = unique_instance("pf")
    r = cli("launch", *args, "--instance", instance, check=False, timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "[launch] instance" not in r.stdout and "Traceback" not in r.stderr
    assert not os.path.exists(f"/dev/shm/autoglm-{instance}")
    assert instance_processes(instance) == []
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("check", [(), ("--check",)])
def test_a_port_in_use_is_refused(gateway_spec, check):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _refused(str(gateway_spec), "--port", str(port), *check)
    assert line == f"autoglm launch: cannot listen on 127.0.0.1:{port}: address already in use"


def test_a_host_that_is_no_address_is_named(gateway_spec):
    line = _refused(str(gateway_spec), "--host", "256.1.1.1", "--port", "8319")
    assert line.startswith("autoglm launch: cannot listen on 256.1.1.1:8319: unknown host '256.1.1.1'")


def _model_dir(tmp_path, config, files=("tokenizer.json", "model.safetensors")):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    for name in files:
        (d / name).write_text("")
    return d


@pytest.mark.parametrize("config, files, needle", [
    ({"foo": 1}, ("tokenizer.json", "model.safetensors"),
     "{d}/config.json: unsupported architecture"),
    ([1, 2], ("tokenizer.json", "model.safetensors"), "{d}/config.json: not a GLM-4.1V config"),
    (GLM_CONFIG, ("model.safetensors",), "{d}/tokenizer.json: missing"),
    (GLM_CONFIG, ("tokenizer.json",), "{d}: no weights"),
])
@pytest.mark.parametrize("check", [(), ("--check",)])
def test_a_directory_that_is_not_a_model_is_named(gateway_spec, tmp_path, config, files, needle,
                                                  check):
    d = _model_dir(tmp_path, config, files)
    line = _refused(str(gateway_spec), "--model", str(d), *check)
    assert line.startswith(f"autoglm launch: --model {d}: " + needle.format(d=d)), line


def test_a_spec_model_dir_that_is_not_a_model_is_named(tmp_path):
    d = _model_dir(tmp_path, {"foo": 1})
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[pipeline]\nmodel_dir = "{d}"\n' + GATEWAY_SPEC)
    line = _refused(str(spec), "--check")
    assert line.startswith(f"autoglm launch: {spec}: pipeline.model_dir: {d}/config.json: "
                           "unsupported architecture")


@pytest.mark.parametrize("args, line", [
    (("--port", "99999"), "autoglm launch: --port 99999 is not a TCP port (0-65535)"),
    (("--model", "/nonexistent"), "autoglm launch: --model /nonexistent: not a directory"),
    (("--allowed-local-media-path", "/nonexistent"),
     "autoglm launch: --allowed-local-media-path /nonexistent: not a directory"),
])
def test_check_validates_the_flags(gateway_spec, args, line):
    assert _refused(str(gateway_spec), "--check", *args) == line


def test_check_refuses_an_unknown_compute(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(GATEWAY_SPEC.replace('compute = "model"', 'compute = "modle"'))
    assert _refused(str(spec), "--check") == (
        f"autoglm launch: {spec}: stages.gateway.params.compute: must be one of model, minimal, "
        "got 'modle'")


def test_check_passes_a_good_model_dir_and_says_where_the_api_listens(gateway_spec, tmp_path):
    d = _model_dir(tmp_path, GLM_CONFIG)
    r = cli("launch", str(gateway_spec), "--check", "--model", str(d), "--port", "0")
    assert f"{gateway_spec}: OK" in r.stdout
    assert f"  model {d}" in r.stdout and "OpenAI API at http://127.0.0.1:(any free port)/v1" in r.stdout
