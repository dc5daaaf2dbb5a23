"""`autoglm param set` against a launched pipeline (real processes, real DDS): the HTTP gateway
(compute "model", on the embedded default model) with the minimal vision and decision stages,
which start in about a second. Values of the wrong type or unknown names are refused with a
one-line reason and never kill a stage (nor its restarts, which get the launcher's kept
value); trace.enabled takes strict booleans and switches the gateway's own spans too; the
cost measurement of `autoglm profile` puts trace.enabled back as it found it."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from launch_testkit import GATEWAY_SPEC, Pipeline, cli, unique_instance

# The real HTTP gateway of launch_testkit.GATEWAY_SPEC, with the minimal vision and decision
# stages: all three start in about a second.
SPEC = GATEWAY_SPEC + """
[channels.embeddings]
kind = "pool"
slots = 8
slot_bytes = 65536

[stages.vision]
module = "perception.vision.stage"
cores = "auto"
inputs = ["frames"]
outputs = ["embeddings"]
params = { patch = 14, hidden = 16, seed = 0 }

[stages.decision]
module = "decision.stage"
cores = "auto"
inputs = ["embeddings", "prompts"]
outputs = ["tokens"]
params = { max_tokens = 4 }
"""
STAGES = ["gateway", "vision", "decision"]
GATEWAY_SPANS = {"gateway.receive", "gateway.media_decode", "gateway.shm_write",
                 "gateway.response_sent"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    spec = tmp_path_factory.mktemp("param") / "param.toml"
    spec.write_text(SPEC)
    # Started with spans off, as AUTOGLM_TRACE=0 asks (test_trace_env_0_...).
    saved = os.environ.get("AUTOGLM_TRACE")
    os.environ["AUTOGLM_TRACE"] = "0"
    try:
        p = Pipeline(spec, unique_instance("tp"), STAGES)
    finally:
        os.environ.pop("AUTOGLM_TRACE") if saved is None else \
            os.environ.__setitem__("AUTOGLM_TRACE", saved)
    try:
        p.wait_ready()
        line = p.wait_for_line("[gateway] OpenAI API at ", 5)
        p.url = re.search(r"(http://\S+)/v1", line).group(1)
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def spans(pipeline):
    """Every span of the instance, from a collector attached for the whole module."""
    from profiler.collect import SpanCollector

    with SpanCollector(pipeline.instance, node_name=f"test-spans-{os.getpid()}") as col:
        yield col


def param(pipeline, *args, check=True):
    r = cli("param", "set", *args, "--instance", pipeline.instance, check=check)
    return r


def pids(pipeline) -> dict[str, int]:
    return pipeline.stage_pids()


def chat(pipeline, max_tokens: int = 3) -> dict:
    import httpx

    r = httpx.post(pipeline.url + "/v1/chat/completions", timeout=30, json={
        "model": "autoglm-phone-9b", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.json()


def restart(pipeline, stage: str) -> int:
    """SIGKILL the stage and wait until its restarted process is ready; the line index from
    which the new process's output starts."""
    old = pids(pipeline)[stage]
    start = len(pipeline.lines)
    os.kill(old, signal.SIGKILL)
    pipeline.wait_for_line(f"[launch] {stage} (pid {old}) dead", 10, start=start)
    at = start
    while True:   # the launcher's line for the new process: "[launch] NAME   pid N ... ready in"
        line = pipeline.wait_for_line(f"[launch] {stage} ", 60, start=at)
        at = pipeline.lines.index(line, at) + 1
        if "ready in" in line:
            break
    assert pids(pipeline)[stage] != old
    return start


def gateway_spans_of(spans, start: int) -> set[str]:
    got, _ = spans.spans_since(start)
    return {s.name for s in got if s.name.startswith("gateway.")}


def test_trace_env_0_starts_every_stage_gateway_included_with_spans_off(pipeline, spans):
    """First in the module: nothing has set trace.enabled yet."""
    assert spans.wait_for_writers(3, timeout=10)
    start = spans.received
    chat(pipeline)
    time.sleep(1.0)   # a bundle goes out within 0.5 s
    assert spans.spans_since(start)[0] == []
    param(pipeline, "trace.enabled", "on")
    chat(pipeline)
    assert spans.wait_for(lambda ss: GATEWAY_SPANS <= {s.name for s in ss[start:]}, 10)


def test_a_value_of_the_wrong_type_is_refused_and_the_stage_lives_on(pipeline):
    param(pipeline, "decision.max_tokens", "3")
    before = pids(pipeline)
    r = param(pipeline, "decision.max_tokens", "abc", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == ('autoglm param: decision.max_tokens = "abc" refused by decision: '
                                'expected an integer >= 1, got "abc"; decision.max_tokens stays 3')
    time.sleep(0.5)
    assert pids(pipeline) == before            # nobody died
    # The value every stage refused is not what the launcher keeps: 3 is, for restarts too.
    assert listed(pipeline)["decision.max_tokens"] == 3
    assert chat(pipeline, max_tokens=8)["usage"]["completion_tokens"] == 3
    restart(pipeline, "decision")
    assert chat(pipeline, max_tokens=8)["usage"]["completion_tokens"] == 3


def listed(pipeline) -> dict:
    return json.loads(cli("param", "list", "--instance", pipeline.instance, "--json").stdout)


def test_a_refused_value_with_none_before_is_withdrawn_not_kept(pipeline):
    """`param set` of a value no stage applied, of a name never set: the launcher keeps
    nothing under that name (it kept the refused value, listed it, and sent it to every
    restart of the stage, which refused it again)."""
    for args in (("vision.scale", "big"), ("nosuch.thing", "3")):
        assert param(pipeline, *args, check=False).returncode == 1
    deadline = time.monotonic() + 10
    while {"vision.scale", "nosuch.thing"} & set(listed(pipeline)):
        assert time.monotonic() < deadline, listed(pipeline)
    start = restart(pipeline, "vision")
    time.sleep(1.0)   # the launcher's kept values reach a new stage at once
    assert not [line for line in pipeline.lines[start:] if "config vision.scale" in line]


def test_a_kept_bad_value_does_not_crash_loop_a_restarted_stage(pipeline):
    """A bad value written on the config topic by another tool than `param set` (which takes
    back what no stage applied) stays kept by the launcher: each restart of the stage gets
    it, refuses it, and serves."""
    from control import topics as t
    from control.messages import ConfigValue
    from control.plane import ControlPlane

    with ControlPlane(pipeline.instance, "test-dds-tool") as plane:
        w = plane.writer(t.CONFIG)
        assert w.wait_for_readers(4, timeout=10)   # the launcher and the three stages
        w.write(ConfigValue(name="vision.delay_s", request_id="tool-1", value_json="-1"))
        assert w.wait_for_acks(5)
    pipeline.wait_for_line("config vision.delay_s=-1 refused", 10)
    assert listed(pipeline)["vision.delay_s"] == -1

    def vision_row() -> dict:
        rows = json.loads(cli("node", "list", "--instance", pipeline.instance, "--json").stdout)
        return next(r for r in rows if r["name"] == "vision")

    before = vision_row()["restarts"]
    restart(pipeline, "vision")
    time.sleep(2.0)   # long enough for a crash loop (backoff 0.2 s) to show
    row = vision_row()
    assert row["state"] in ("ready", "busy") and row["restarts"] == before + 1
    assert not any("crash-looping" in line for line in pipeline.lines)


def test_unknown_names_and_wrong_types_are_refused(pipeline):
    r = param(pipeline, "nosuch.thing", "3", check=False)
    assert r.returncode == 1 and r.stderr.strip() == (
        "autoglm param: no stage has a parameter 'nosuch.thing' (known: decision.max_tokens, "
        "trace.enabled, vision.delay_s, vision.scale)")
    r = param(pipeline, "vision.scale", "big", check=False)
    assert r.returncode == 1 and 'refused by vision: expected a number, got "big"' in r.stderr
    r = param(pipeline, "trace.enabled", "{bad", check=False)
    assert r.returncode == 1 and r.stderr.strip().startswith(
        'autoglm param: trace.enabled = "{bad" refused by decision, gateway, vision: expected '
        'a boolean (true/false, on/off, yes/no, 1/0), got "{bad"')
    out = json.loads(param(pipeline, "vision.scale", "1.5", "--json").stdout)
    assert out["applied"] == ["vision"] and out["ignored"] == ["decision", "gateway"]


@pytest.mark.parametrize("off,on", [("off", "ON"), ("False", "1"), ("no", "true")])
def test_trace_enabled_takes_strict_booleans_and_switches_the_gateway_spans(pipeline, spans,
                                                                           off, on):
    assert spans.wait_for_writers(3, timeout=10)
    out = json.loads(param(pipeline, "trace.enabled", off, "--json").stdout)
    assert out["applied"] == sorted(STAGES)
    start = spans.received
    chat(pipeline)
    time.sleep(1.0)   # a bundle goes out within 0.5 s
    assert spans.spans_since(start)[0] == []   # none at all: gateway's own spans included
    param(pipeline, "trace.enabled", on)
    start = spans.received
    chat(pipeline)
    # (the predicate runs under the collector's lock: it gets the list, never calls back)
    assert spans.wait_for(lambda ss: GATEWAY_SPANS <= {s.name for s in ss[start:]}, 10)


def test_the_gateway_spans_stay_off_after_a_gateway_restart(pipeline, spans):
    param(pipeline, "trace.enabled", "false")
    start = restart(pipeline, "gateway")   # the launcher re-sends the kept value
    line = pipeline.wait_for_line("[gateway] OpenAI API at ", 30, start=start)
    pipeline.url = re.search(r"(http://\S+)/v1", line).group(1)
    time.sleep(1.0)
    start = spans.received
    chat(pipeline)
    time.sleep(1.0)
    assert gateway_spans_of(spans, start) == set()
    param(pipeline, "trace.enabled", "true")


@pytest.fixture()
def paced_url():
    """An SSE server streaming 6 tokens 10 ms apart (tests/profiler/paced_server.py): a decode
    speed to measure; the minimal decision stage writes all its tokens at once."""
    import subprocess
    import sys

    from launch_testkit import REPO

    p = subprocess.Popen([sys.executable, "tests/profiler/paced_server.py", "--ttft-ms", "20",
                          "--itl-ms", "10", "--tokens", "6"], cwd=REPO, stdout=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        p.terminate()
        p.wait(10)


def test_decode_cost_measurement_puts_tracing_back_as_it_was(pipeline, spans, paced_url):
    """`autoglm profile --measure-cost N --instance I --base-url URL` switches the instance's
    spans off and on; afterwards, also when it failed, they are as they were before (it used
    to leave them on)."""
    from profiler.cost import measure_decode_cost

    def no_spans_from_a_request() -> bool:
        start = spans.received
        chat(pipeline)
        time.sleep(1.0)   # a bundle goes out within 0.5 s
        return spans.spans_since(start)[0] == []

    param(pipeline, "trace.enabled", "off")
    c = measure_decode_cost(pipeline.instance, paced_url, rounds=1, concurrency=1, max_tokens=4)
    assert [r["side"] for r in c["rounds"]] == ["off", "spans", "profiled"]
    assert listed(pipeline)["trace.enabled"] is False
    assert no_spans_from_a_request()         # the stages themselves are off again
    # A measurement that fails (the minimal pipeline's tokens come in one chunk: no decode
    # speed) puts it back too.
    with pytest.raises(RuntimeError, match="over time"):
        measure_decode_cost(pipeline.instance, pipeline.url, rounds=1, concurrency=1,
                            max_tokens=4)
    assert no_spans_from_a_request()
    param(pipeline, "trace.enabled", "on")


def test_decode_cost_measurement_leaves_no_kept_value_where_there_was_none(pipeline, paced_url):
    """With no trace.enabled kept by the launcher, a measurement keeps none afterwards either
    (it left `trace.enabled = true` there, listed by `param list` and sent to restarts)."""
    from control import topics as t
    from control.messages import CONFIG_WITHDRAWN, ConfigValue
    from control.plane import ControlPlane

    from profiler.cost import format_decode_cost, measure_decode_cost

    with ControlPlane(pipeline.instance, "test-withdraw") as plane:   # as `param set` does
        w = plane.writer(t.CONFIG)
        assert w.wait_for_readers(4, timeout=10)
        w.write(ConfigValue(name="trace.enabled", request_id="w1", value_json=CONFIG_WITHDRAWN))
        assert w.wait_for_acks(5)
    deadline = time.monotonic() + 10
    while "trace.enabled" in listed(pipeline):
        assert time.monotonic() < deadline
    c = measure_decode_cost(pipeline.instance, paced_url, rounds=1, concurrency=1, max_tokens=4)
    assert "trace.enabled" not in listed(pipeline)
    text = format_decode_cost(c)
    assert "spans on, profiler attached" in text and "slower than spans off in" in text
    lo, hi = c["range_tokens_per_s"]["off"]
    assert lo <= c["median_tokens_per_s"]["off"] <= hi
    assert c["slower_than_off_in_blocks"]["profiled"][1] == 1
