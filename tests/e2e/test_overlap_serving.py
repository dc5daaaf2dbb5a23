"""What the stages do by default on CUDA, forced on the CPU, through the whole pipeline: the
decision stage's overlapped decode (params.overlap_decode) and the vision stage resizing the
frames the gateway sends at their own size (params.resize_frames). Greedy outputs must equal
the in-process model's (conftest.check_greedy)."""
from __future__ import annotations

import concurrent.futures as cf
import re

import pytest

from .conftest import REPO, WITH_IDS, check_greedy, ids_of, ready_pipeline
from .test_serving import MODEL

DECISION_PARAMS = 'params = { compute = "model", max_model_len = 25480 }'
VISION_PARAMS = '[stages.vision]\nmodule = "perception.vision.stage"\ncores = "auto"\ngpu = "cuda"\nbackend = "torch"\ninputs = ["frames"]\noutputs = ["embeddings"]\nparams = { compute = "model" }'


@pytest.fixture(scope="module")
def overlap_pipeline(tmp_path_factory):
    spec = (REPO / "launch/specs/default.toml").read_text()
    assert DECISION_PARAMS in spec, "the default spec's decision params changed: update this test"
    assert VISION_PARAMS in spec, "the default spec's vision stage changed: update this test"
    spec = spec.replace(DECISION_PARAMS, DECISION_PARAMS[:-2] + ", overlap_decode = true }")
    spec = spec.replace(VISION_PARAMS, VISION_PARAMS[:-2] + ", resize_frames = true }")
    path = tmp_path_factory.mktemp("spec") / "overlap.toml"
    path.write_text(spec)
    yield from ready_pipeline("ovl", spec=str(path))


def test_concurrent_greedy_streams_equal_the_in_process_model(overlap_pipeline):
    import openai
    client = openai.OpenAI(base_url=overlap_pipeline.url + "/v1", api_key="EMPTY", timeout=120)
    prompts = ["Tap the search bar", "Open settings", "Swipe up twice", "Go back home"]
    lengths = [5, 12, 3, 9]       # different lengths: requests leave the chained batch apart

    def one(i):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompts[i]}],
            max_tokens=lengths[i], temperature=0, stream=True, **WITH_IDS)
        text, finish, ids = "", None, []
        for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                ids += ids_of(choice.logprobs.content) if choice.logprobs else []
        return text, finish, ids

    assert "overlapped decode on" in overlap_pipeline.output()
    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(one, range(4)))
    for i, (text, finish, ids) in enumerate(results):
        assert finish == "length" and len(ids) == lengths[i]
        check_greedy([{"role": "user", "content": prompts[i]}], [], text, ids, lengths[i])


def test_an_image_resized_by_the_vision_stage_equals_the_in_process_model(overlap_pipeline):
    import base64
    import json
    import subprocess
    import sys

    import openai

    from runtime.compute import RESIZES_FRAMES

    from .conftest import image_message, png_data_url

    info = subprocess.run([sys.executable, "-m", "launch.cli", "node", "info", "vision",
                           "--instance", overlap_pipeline.instance, "--json"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    assert RESIZES_FRAMES in json.loads(info.stdout)["detail"]
    # The launcher's line still names just the device.
    line = next(ln for ln in overlap_pipeline.output().splitlines() if "] vision " in ln and " pid " in ln)
    assert re.search(r"device (cpu|cuda(:\d+)?)  ready in", line), line
    client = openai.OpenAI(base_url=overlap_pipeline.url + "/v1", api_key="EMPTY", timeout=120)
    url = png_data_url(300, 590, seed=4)     # resized to 308x588: by the vision stage here
    r = client.chat.completions.create(model=MODEL, messages=[image_message(url, "Open it")],
                                       max_tokens=8, temperature=0, **WITH_IDS)
    png = base64.b64decode(url.split(",", 1)[1])
    ref = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Open it"}]}]
    c = r.choices[0]
    check_greedy(ref, [png], c.message.content, ids_of(c.logprobs.content), 8)
