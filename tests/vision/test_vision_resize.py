"""The vision stage's resize (torch, for its GPU) against Pillow's bicubic, byte for byte, and
transformers' image processor on images the gateway sends at their own size."""
from __future__ import annotations

import numpy as np
import pytest
import PIL
import torch
from PIL import Image

from perception.vision.processor import ImageProcessor
from perception.vision.resize import resize_bicubic, vertical_first


def _pillow(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC))


def test_equals_pillow_for_random_sizes_both_ways_and_both_pass_orders():
    rng = np.random.default_rng(11)
    orders = set()
    for _ in range(150):
        h, w = int(rng.integers(8, 260)), int(rng.integers(8, 260))
        oh, ow = int(rng.integers(4, 400)), int(rng.integers(4, 400))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = resize_bicubic(torch.from_numpy(a), oh, ow).numpy()
        assert np.array_equal(got, _pillow(a, oh, ow)), (h, w, oh, ow)
        orders.add(vertical_first(h, w, oh, ow))
    # Every pass order the installed Pillow has was covered: both since Pillow 13, before it
    # horizontal first only.
    assert orders == ({True, False} if int(PIL.__version__.split(".")[0]) >= 13 else {False})


def test_equals_pillow_for_a_phone_screenshot():
    rng = np.random.default_rng(2)
    # Flat blocks with hard edges, as UI screenshots have (where ringing shows).
    small = rng.integers(0, 256, (61, 28, 3), dtype=np.uint8)
    a = np.array(Image.fromarray(small).resize((1080, 2400), Image.Resampling.NEAREST))
    h, w = ImageProcessor(max_pixels=5_000_000).resized_size(1080, 2400)
    assert (h, w) == (2352, 1036)
    assert np.array_equal(resize_bicubic(torch.from_numpy(a), h, w).numpy(), _pillow(a, h, w))


def test_the_pass_order_follows_pillow_13():
    assert vertical_first(100, 80, 56, 112, pillow_major=13)       # height loses 44, width grows
    assert not vertical_first(2400, 1080, 2352, 1036, pillow_major=13)   # loses 48 and 44
    assert not vertical_first(100, 80, 56, 112, pillow_major=12)   # before 13: always horizontal


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        resize_bicubic(torch.zeros((4, 4, 3), dtype=torch.float32), 2, 2)


@pytest.mark.parametrize("with_torch", [True, False])
def test_the_stage_brings_a_frame_to_its_grid_size_as_the_processor_does(with_torch):
    """With torch (what it does on CUDA; run here on the CPU) and with Pillow."""
    from perception.vision.stage import ModelVisionStage

    stage = ModelVisionStage.__new__(ModelVisionStage)
    proc = ImageProcessor(max_pixels=28 * 28 * 400)
    stage.device, stage.torch_resize, stage.processor = torch.device("cpu"), with_torch, proc
    rng = np.random.default_rng(5)
    for w, h in ((300, 590), (1080, 2400), (57, 33), (560, 280)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rh, rw = proc.resized_size(w, h)
        frame = torch.from_numpy(a)
        out = stage.to_size(frame, rh, rw)
        assert np.array_equal(out.numpy(), proc.resize(a))
        if (rh, rw) == (h, w):
            assert out is frame   # already at its size: no copy


def test_the_stage_stops_announcing_a_resize_that_fails_its_check(monkeypatch):
    import perception.vision.resize as resize
    from perception.vision.stage import ModelVisionStage

    class Ctx:
        lines: list = []

        def log(self, line):
            self.lines.append(line)

    stage = ModelVisionStage.__new__(ModelVisionStage)
    stage.device, stage.torch_resize, stage.ctx = torch.device("cpu"), True, Ctx()
    stage.processor = ImageProcessor()
    stage.resizes_frames = True
    stage._check_device_resize()
    assert stage.resizes_frames and stage.ready_notes == ("resizes frames",)
    monkeypatch.setattr(resize, "resize_bicubic",
                        lambda image, h, w: torch.zeros((h, w, 3), dtype=torch.uint8))
    stage._check_device_resize()
    assert not stage.resizes_frames and stage.ready_notes == () and not stage.torch_resize
    assert "differ from this Pillow's" in stage.ctx.lines[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA resize is checked on a GPU")
def test_on_cuda_it_equals_pillow_too():
    rng = np.random.default_rng(13)
    for _ in range(40):
        h, w = int(rng.integers(8, 700)), int(rng.integers(8, 700))
        oh, ow = int(rng.integers(4, 900)), int(rng.integers(4, 900))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = resize_bicubic(torch.from_numpy(a).cuda(), oh, ow)
        assert got.is_cuda
        assert np.array_equal(got.cpu().numpy(), _pillow(a, oh, ow)), (h, w, oh, ow)
