"""The decision stage with overlapped decode (params.overlap_decode, on by default with CUDA)
through the whole pipeline: concurrent greedy streams must equal the in-process model."""
from __future__ import annotations

import concurrent.futures as cf

import pytest

from .conftest import REPO, ready_pipeline
from .test_serving import MODEL, _reference_text

DECISION_PARAMS = 'params = { compute = "model", max_model_len = 25480 }'


@pytest.fixture(scope="module")
def overlap_pipeline(tmp_path_factory):
    spec = (REPO / "launch/specs/default.toml").read_text()
    assert DECISION_PARAMS in spec, "the default spec's decision params changed: update this test"
    path = tmp_path_factory.mktemp("spec") / "overlap.toml"
    path.write_text(spec.replace(DECISION_PARAMS, DECISION_PARAMS[:-2] + ", overlap_decode = true }"))
    yield from ready_pipeline("ovl", spec=str(path))


def test_concurrent_greedy_streams_equal_the_in_process_model(overlap_pipeline):
    import openai
    client = openai.OpenAI(base_url=overlap_pipeline.url + "/v1", api_key="EMPTY", timeout=120)
    prompts = ["Tap the search bar", "Open settings", "Swipe up twice", "Go back home"]
    lengths = [5, 12, 3, 9]       # different lengths: requests leave the chained batch apart

    def one(i):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompts[i]}],
            max_tokens=lengths[i], temperature=0, stream=True)
        text, finish = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    assert "overlapped decode on" in overlap_pipeline.output()
    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(one, range(4)))
    for i, (text, finish) in enumerate(results):
        assert finish == "length"
        assert text == _reference_text([{"role": "user", "content": prompts[i]}], [], lengths[i])
