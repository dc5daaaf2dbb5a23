"""The real client against a launched pipeline (launch/specs/minimal.toml: minimal stage
computes, real processes, real shm and DDS). The decision stage there is a stand-in whose
tokens are a known function of its inputs, which is what these tests check arrives."""
import asyncio
import os
import subprocess
import sys
import time
import uuid

import httpx
import numpy as np
import pytest

from execution.pipeline_client import PreparedImage, PreparedRequest, SamplingParams
from execution.shm_client import ShmPipelineClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINIMAL_SPEC = os.path.join(ROOT, "launch", "specs", "minimal.toml")
N_STAGES = 4  # gateway, vision, audio, decision read the request topic


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    instance = f"gwtest-{uuid.uuid4().hex[:8]}"
    ready = tmp_path_factory.mktemp("launch") / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from launch.launcher import launch; "
         f"sys.exit(launch({MINIMAL_SPEC!r}, {instance!r}, ready_file={str(ready)!r}))"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.poll() is not None else ""
            proc.kill()
            raise RuntimeError(f"pipeline did not start: {out[-2000:]}")
        time.sleep(0.1)
    yield instance
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def expected_no_media(n, vocab=32000):
    return [(7919 * i) % vocab for i in range(n)]


def test_client_round_trip_and_image(pipeline):
    async def main():
        client = ShmPipelineClient(pipeline)
        await client.start()
        try:
            assert await client.wait_for_stages(N_STAGES, 20)
            events = [ev async for ev in client.submit(PreparedRequest(
                "t-text", (1, 2, 3), SamplingParams(max_tokens=5, stop_token_ids=(99999,))))]
            ids = [t for ev in events for t in ev.token_ids]
            assert ids == expected_no_media(5)
            assert events[-1].finish_reason == "length"
            frame = np.full((56, 84, 3), 128, np.uint8)
            img = PreparedImage(frame, (1, 4, 6), 6)
            events = [ev async for ev in client.submit(PreparedRequest(
                "t-image", (1, 2), SamplingParams(max_tokens=4), images=(img,)))]
            ids2 = [t for ev in events for t in ev.token_ids]
            assert len(ids2) == 4 and ids2 != expected_no_media(4)  # the frame shaped them
            h = await client.health()
            assert h.ready, h
            # Stage latencies come from the stages' done events (when the stage took the
            # request, t_begin_ns, to the event), which may arrive after the tokens (DDS and
            # the shm ring are not ordered with each other).
            deadline = time.monotonic() + 10
            lat: dict = {}
            while len(lat.get("decision", ())) < 2 or not lat.get("vision"):
                assert time.monotonic() < deadline, lat
                for stage, values in client.stats().stage_latencies.items():
                    lat.setdefault(stage, []).extend(values)
                await asyncio.sleep(0.05)
            assert len(lat["decision"]) == 2 and len(lat["vision"]) == 1, lat
            assert all(0 < v < 10 for v in lat["decision"] + lat["vision"]), lat
        finally:
            await client.close()
    asyncio.run(main())


def test_a_text_request_is_published_by_submit_itself(pipeline):
    """submit() publishes a text request before its events are read (the pipeline starts
    while the gateway sets the HTTP response up), and a cancel before they are read ends it."""
    from execution.pipeline_client import PipelineError
    from shm.ring import Ring

    async def main():
        client = ShmPipelineClient(pipeline)
        await client.start()
        tokens = Ring.attach(pipeline, "tokens")
        try:
            assert await client.wait_for_stages(N_STAGES, 20)
            before = tokens.written
            events = client.submit(PreparedRequest(
                "t-eager", (1, 2, 3), SamplingParams(max_tokens=3, stop_token_ids=(99999,))))
            deadline = time.monotonic() + 10
            while tokens.written < before + 3:    # generated with nobody reading yet
                assert time.monotonic() < deadline, "submit() did not publish the request"
                await asyncio.sleep(0.01)
            assert [t for ev in [ev async for ev in events] for t in ev.token_ids] == \
                expected_no_media(3)

            events = client.submit(PreparedRequest("t-gone", (1, 2), SamplingParams(max_tokens=3)))
            await client.cancel("t-gone")
            with pytest.raises(PipelineError, match="cancelled"):
                [ev async for ev in events]
        finally:
            tokens.close()
            await client.close()
    asyncio.run(main())


def test_media_slots_of_a_request_not_published_go_back(pipeline):
    """A request that cannot get all its frames slots gives back those it took: they were
    left 'ready' for good, with no reader to come, and every image after was refused."""
    from execution.pipeline_client import PipelineError
    from shm.pool import SlotPool

    img = PreparedImage(np.full((56, 84, 3), 7, np.uint8), (1, 4, 6), 6)

    async def main():
        client = ShmPipelineClient(pipeline, put_timeout=0.5)
        await client.start()
        frames = SlotPool.attach(pipeline, "frames")
        try:
            assert await client.wait_for_stages(N_STAGES, 20)
            too_many = PreparedRequest("t-too-many", (1, 2), SamplingParams(max_tokens=2),
                                       images=(img,) * (frames.n_slots + 1))
            with pytest.raises(PipelineError, match="no free slot"):
                [ev async for ev in client.submit(too_many)]
            assert frames.free_slots() == frames.n_slots
            one = PreparedRequest("t-one", (1, 2), SamplingParams(max_tokens=2), images=(img,))
            assert len([t for ev in [ev async for ev in client.submit(one)]
                        for t in ev.token_ids]) == 2
        finally:
            frames.close()
            await client.close()
    asyncio.run(main())


def test_http_through_launched_pipeline(pipeline, glm_tok):
    from .harness import running_gateway
    client = ShmPipelineClient(pipeline)
    with running_gateway(glm_tok, client) as (url, gw):
        deadline = time.monotonic() + 20
        while httpx.get(url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "autoglm-phone-9b", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}})
        assert r.status_code == 200
        events = [e for e in r.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        import json
        usage = json.loads(events[-2][6:])["usage"]
        assert usage["completion_tokens"] == 6
        last = json.loads(events[-3][6:])
        assert last["choices"][0]["finish_reason"] == "length"


def test_sixteen_concurrent_streams_openai_sdk(pipeline, glm_tok):
    import openai
    from .harness import running_gateway

    async def one(c, i):
        s = await c.chat.completions.create(
            model="autoglm-phone-9b", messages=[{"role": "user", "content": f"q{i}"}],
            stream=True, max_tokens=5, temperature=0.0, stream_options={"include_usage": True})
        finish, usage = None, None
        async for ch in s:
            if ch.choices:
                finish = ch.choices[0].finish_reason or finish
            usage = ch.usage or usage
        return finish, usage.completion_tokens

    with running_gateway(glm_tok, ShmPipelineClient(pipeline)) as (url, _):
        deadline = time.monotonic() + 20
        while httpx.get(url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)

        async def main():
            c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="EMPTY")
            return await asyncio.gather(*[one(c, i) for i in range(16)])
        results = asyncio.run(main())
    assert results == [("length", 5)] * 16


def test_images_go_at_their_own_size_only_while_a_ready_stage_resizes_frames(pipeline):
    """The vision stage on a GPU says "resizes frames" in its ready state; the minimal one
    here does not. A stand-in stage announces it over DDS, as a real one would."""
    from control import topics as t
    from control.messages import StageState
    from control.plane import ControlPlane
    from execution.server import _frame_at_own_size
    from runtime.compute import RESIZES_FRAMES

    async def main():
        client = ShmPipelineClient(pipeline)
        await client.start()
        try:
            own_size = _frame_at_own_size(client, pipeline)
            screenshot = 1080 * 2400 * 3            # 7.8 MB: over this spec's 3 MiB slots
            assert not own_size(100_000)            # nothing resizes frames yet
            with ControlPlane(pipeline, "gpu-vision") as plane:
                states = plane.writer(t.STAGE_STATE)

                def say(state, detail):
                    states.write(StageState(stage="gpu-vision", state=state, detail=detail,
                                            pid=os.getpid(), t_mono_ns=time.monotonic_ns()))

                def within(seconds, want):
                    deadline = time.monotonic() + seconds
                    while own_size(100_000) != want:
                        assert time.monotonic() < deadline, f"never {want}"
                        time.sleep(0.05)

                say("ready", f"device cuda:0; {RESIZES_FRAMES}")
                within(10, True)
                assert not own_size(screenshot)     # does not fit a slot: resized here
                say("dead", "stopped")
                within(10, False)
        finally:
            await client.close()

    asyncio.run(main())


ROUTING_FIRST_CALL = r"""
import asyncio, sys
from types import SimpleNamespace
import numpy as np
from execution.shm_client import ShmPipelineClient
from runtime.records import TOKEN_RECORD

client = ShmPipelineClient("routing-check")
client._queues = {7: asyncio.Queue(), 9: asyncio.Queue()}
recs = np.zeros(5, dtype=TOKEN_RECORD)
recs["request_key"] = [7, 9, 7, 3, 9]      # 3: a request this gateway does not know
recs["token_id"] = [10, 20, 11, 99, 21]
before = set(sys.modules)
client._route_tokens(SimpleNamespace(records=recs, lost=0))
client._route_tokens(SimpleNamespace(records=recs[:1], lost=0))
print(sorted(set(sys.modules) - before), "numpy.ma" in before)
for key in (7, 9):
    q = client._queues[key]
    print(key, [r["token_id"].tolist() for r in (q.get_nowait() for _ in range(q.qsize()))])
"""


def test_a_shared_batch_goes_to_each_request_in_order_and_imports_nothing_on_the_way():
    # The first batch shared by two requests used to import numpy.ma (through np.unique):
    # ~60 ms during which no stream moved, on the H200 host.
    out = subprocess.run([sys.executable, "-c", ROUTING_FIRST_CALL], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0] == "[] False"   # no module imported; numpy.ma was not loaded before either
    assert out[1] == "7 [[10, 11], [10]]"
    assert out[2] == "9 [[20, 21]]"


def test_a_request_left_to_a_hung_stage_is_failed_when_the_stage_is_lost(pipeline):
    """A request published while its vision stage hangs never reaches the stage's in-flight
    board: when the launcher kills the hung stage (no heartbeat for dead_after_s) and restarts
    it, the new process never sees it. It waited until the client gave up; now it is failed,
    naming the stage."""
    import json
    import re
    import signal

    nodes = subprocess.run([sys.executable, "-m", "launch.cli", "node", "list", "--instance",
                            pipeline, "--json"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    vision = next(r["pid"] for r in json.loads(nodes.stdout) if r["name"] == "vision")
    img = PreparedImage(np.full((56, 84, 3), 9, np.uint8), (1, 4, 6), 6)

    async def main():
        client = ShmPipelineClient(pipeline)
        await client.start()
        try:
            assert await client.wait_for_stages(N_STAGES, 20)
            os.kill(vision, signal.SIGSTOP)
            t0 = time.monotonic()
            async def events_of(req):
                return [ev async for ev in client.submit(req)]

            events = await asyncio.wait_for(events_of(PreparedRequest(   # it hung for good
                "t-hung", (1, 2), SamplingParams(max_tokens=2), images=(img,))), 30)
            assert time.monotonic() - t0 < 30
            assert events[-1].finish_reason == "error"
            assert re.fullmatch(r"stage 'vision' died \(no heartbeat for .*\) before it took "
                                "this request", events[-1].error), events[-1].error
            assert await client.wait_for_stages(N_STAGES, 60)      # restarted, for the rest
        finally:
            try:
                os.kill(vision, signal.SIGCONT)
            except ProcessLookupError:
                pass    # killed by the launcher, as it should be
            await client.close()
    asyncio.run(main())
