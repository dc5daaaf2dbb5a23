"""Images are decoded on the cores that no stage is pinned to (execution.media_workers): a
pipeline whose four stages all run on core 0 decodes on the others, in threads pinned there,
while the gateway's own threads stay on core 0."""
from __future__ import annotations

import glob
import os

import pytest

from launch.spec import format_cores, parse_cores

from .conftest import REPO, image_message, png_data_url, ready_pipeline
from .test_serving import MODEL

MACHINE = sorted(os.sched_getaffinity(0))
SPARE = [c for c in MACHINE if c != 0]

if len(MACHINE) < 2 or MACHINE[0] != 0:
    pytest.skip("needs core 0 and at least one other core to leave spare (CI has 2)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def one_core_pipeline(tmp_path_factory):
    spec = (REPO / "launch/specs/default.toml").read_text()
    assert spec.count('cores = "auto"') == 4, "the default spec's stages changed: update this test"
    path = tmp_path_factory.mktemp("spec") / "one-core.toml"
    path.write_text(spec.replace('cores = "auto"', 'cores = "0"'))
    yield from ready_pipeline("mcores", spec=str(path))


def _thread_masks(pid: int) -> list[list[int]]:
    masks = []
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        with open(status) as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    masks.append(parse_cores(line.split(":", 1)[1].strip()))
    return masks


def test_images_are_decoded_on_the_spare_cores(one_core_pipeline):
    import openai

    p = one_core_pipeline
    assert f"4 stages on cores 0 of {format_cores(MACHINE)}" in p.output()
    assert f", cores {format_cores(SPARE)} spare" in p.output()
    assert f"images and audio decoded on cores {format_cores(SPARE)}" in p.output()
    gateway = p.stage_pids()["gateway"]
    assert SPARE not in _thread_masks(gateway)      # threads start with the first image
    client = openai.OpenAI(base_url=p.url + "/v1", api_key="EMPTY", timeout=120)
    r = client.chat.completions.create(model=MODEL, max_tokens=3, temperature=0,
                                       messages=[image_message(png_data_url(200, 300), "Open it")])
    assert r.choices[0].finish_reason == "length"
    masks = _thread_masks(gateway)
    assert SPARE in masks                            # the decoding thread, on the spare cores
    assert all(m in ([0], SPARE) for m in masks)     # and the gateway's own threads on core 0
    assert masks.count([0]) >= 1
