"""ImageProcessor against transformers' Glm4vImageProcessor (PIL backend), bit for bit."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
from transformers.models.glm4v.image_processing_pil_glm4v import (
    smart_resize as hf_smart_resize,
)

from perception.vision.processor import (
    ImageInputError,
    ImageProcessor,
    decode_image,
    rgb_array,
    to_rgb,
)

AUTOGLM_MAX_PIXELS = 5_000_000
HF_DEFAULT_SIZE = {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 15000}


def noise(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def opaque(w, h, seed=0, translucent_pixel=False):
    """RGBA with every alpha at 255, as Android's screencap writes; optionally one pixel not."""
    rgba = np.asarray(noise(w, h, "RGBA", seed=seed)).copy()
    rgba[..., 3] = 255
    if translucent_pixel:
        rgba[h // 2, w // 3, 3] = 254
    return Image.fromarray(rgba, mode="RGBA")


def gradient(w, h):
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.broadcast_to((x + y) / 2, (h, w, 1))], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def reference(image, max_pixels=None):
    size = dict(HF_DEFAULT_SIZE)
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    out = Glm4vImageProcessorPil(size=size)(image, return_tensors="np")
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


CASES = [
    ("noise 300x200", lambda: noise(300, 200), None),
    ("gradient 640x480", lambda: gradient(640, 480), None),
    ("noise tall 57x901", lambda: noise(57, 901, seed=1), None),
    ("gradient wide 1500x90", lambda: gradient(1500, 90), None),
    ("noise small, upscaled to min_pixels 40x30", lambda: noise(40, 30, seed=2), None),
    ("rgba with transparency", lambda: noise(120, 96, "RGBA", seed=3), None),
    ("rgba opaque", lambda: opaque(130, 90, seed=9), None),
    ("rgba opaque but one pixel", lambda: opaque(130, 90, seed=9, translucent_pixel=True), None),
    ("grayscale", lambda: noise(200, 150, "L", seed=4), None),
    ("large, scaled down 3000x2000", lambda: gradient(3000, 2000), 1_000_000),
]


@pytest.mark.parametrize("name,make,max_pixels", CASES, ids=[c[0] for c in CASES])
def test_matches_transformers(name, make, max_pixels):
    image = make()
    want_pixels, want_grid = reference(image, max_pixels)
    proc = ImageProcessor(max_pixels=max_pixels or HF_DEFAULT_SIZE["longest_edge"])
    got = proc.preprocess(image)
    assert got.grid_thw == want_grid
    assert got.pixel_values.dtype == np.float32
    assert got.pixel_values.shape == want_pixels.shape == (got.num_patches, 1176)
    np.testing.assert_array_equal(got.pixel_values, want_pixels)
    assert got.num_tokens == proc.num_image_tokens(*image.size)


def test_phone_screenshot_honours_max_pixels():
    shot = noise(1080, 2400, seed=5)
    proc = ImageProcessor(max_pixels=AUTOGLM_MAX_PIXELS)
    got = proc.preprocess(shot)
    assert proc.resized_size(1080, 2400) == (2352, 1036)
    assert got.grid_thw == (1, 168, 74)
    assert got.num_tokens == proc.num_image_tokens(1080, 2400) == 3108
    want_pixels, want_grid = reference(shot, AUTOGLM_MAX_PIXELS)
    assert want_grid == (1, 168, 74)
    np.testing.assert_array_equal(got.pixel_values, want_pixels)
    # Without the deployment limit the default budget lets the screenshot through bigger.
    assert ImageProcessor().num_image_tokens(1080, 2400) == 3354


def test_numpy_input_equals_pil_input():
    image = noise(210, 170, "RGBA", seed=6)
    proc = ImageProcessor()
    from_pil = proc.preprocess(image)
    from_array = proc.preprocess(np.asarray(image))
    assert from_pil.grid_thw == from_array.grid_thw
    np.testing.assert_array_equal(from_pil.pixel_values, from_array.pixel_values)
    gray = np.asarray(noise(90, 60, "L", seed=7))
    np.testing.assert_array_equal(proc.preprocess(gray).pixel_values,
                                  reference(Image.fromarray(gray))[0])


@pytest.mark.parametrize("translucent_pixel", [False, True])
def test_opaque_rgba_equals_compositing_onto_white(translucent_pixel):
    """The opaque shortcut gives what compositing gives, from PIL and from numpy input."""
    image = opaque(77, 55, seed=10, translucent_pixel=translucent_pixel)
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    want = np.asarray(Image.alpha_composite(white, image).convert("RGB"))
    got = to_rgb(image)
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(to_rgb(np.asarray(image))), want)
    array = rgb_array(image)       # what the gateway sends the vision stage
    assert (array.dtype, array.shape) == (np.uint8, (55, 77, 3))
    np.testing.assert_array_equal(array, want)


@pytest.mark.parametrize("make", [lambda: noise(31, 17), lambda: noise(31, 17, "L"),
                                  lambda: noise(31, 17, "RGBA"),
                                  lambda: noise(31, 17, "RGB").convert("P")],
                         ids=["rgb", "grayscale", "rgba", "palette"])
def test_rgb_array_is_to_rgb_as_an_array(make):
    image = make()
    np.testing.assert_array_equal(rgb_array(image), np.asarray(to_rgb(image)))


def test_token_count_matches_transformers_smart_resize():
    rng = np.random.default_rng(8)
    sizes = [(int(w), int(h)) for w, h in rng.integers(28, 5000, (300, 2))]
    sizes += [(1080, 2400), (2400, 1080), (28, 28), (28, 5600), (1440, 3200), (720, 1600)]
    for max_pixels in (AUTOGLM_MAX_PIXELS, HF_DEFAULT_SIZE["longest_edge"], 200_000):
        proc = ImageProcessor(max_pixels=max_pixels)
        for w, h in sizes:
            rh, rw = hf_smart_resize(2, h, w, temporal_factor=2, factor=28,
                                     min_pixels=112 * 112, max_pixels=max_pixels)
            assert proc.resized_size(w, h) == (rh, rw), (w, h, max_pixels)
            assert proc.num_image_tokens(w, h) == (rh // 14) * (rw // 14) // 4


def test_from_dir_reads_preprocessor_config(tmp_path):
    assert ImageProcessor.from_dir(tmp_path).max_pixels == HF_DEFAULT_SIZE["longest_edge"]
    # The file transformers itself writes.
    Glm4vImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": AUTOGLM_MAX_PIXELS},
                           image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]
                           ).save_pretrained(tmp_path)
    proc = ImageProcessor.from_dir(tmp_path)
    assert (proc.min_pixels, proc.max_pixels) == (3136, AUTOGLM_MAX_PIXELS)
    assert proc.image_mean == (0.5, 0.5, 0.5) and proc.image_std == (0.25, 0.25, 0.25)
    assert proc.num_image_tokens(1080, 2400) == 3108
    image = gradient(333, 222)
    want = Glm4vImageProcessorPil.from_pretrained(tmp_path)(image, return_tensors="np")
    np.testing.assert_array_equal(proc.preprocess(image).pixel_values, want["pixel_values"])
    # An explicit deployment limit wins over the file.
    assert ImageProcessor.from_dir(tmp_path, max_pixels=1_000_000).max_pixels == 1_000_000
    # Older files put the limits at the top level.
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 6272, "max_pixels": 4_000_000, "patch_size": 14}))
    proc = ImageProcessor.from_dir(tmp_path)
    assert (proc.min_pixels, proc.max_pixels) == (6272, 4_000_000)


def test_tiny_image_is_refused():
    with pytest.raises(ImageInputError, match="at least 28 pixels"):
        ImageProcessor().preprocess(noise(20, 100))
    with pytest.raises(ImageInputError, match="at least 28 pixels"):
        ImageProcessor().num_image_tokens(100, 27)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ImageInputError, match="aspect ratio 201"):
        ImageProcessor().num_image_tokens(28 * 201, 28)
    with pytest.raises(ImageInputError, match="aspect ratio"):
        ImageProcessor().preprocess(gradient(30, 6100))
    assert ImageProcessor().num_image_tokens(28 * 200, 28) > 0  # exactly 200 is allowed


def test_errors_are_value_errors():
    assert issubclass(ImageInputError, ValueError)


def encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_image_formats():
    image = noise(64, 48, seed=9)
    png = decode_image(encode(image, "PNG"))
    assert png.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(png), np.asarray(image))
    assert decode_image(encode(image, "JPEG", quality=90)).size == (64, 48)
    webp = decode_image(encode(image, "WEBP", lossless=True))
    np.testing.assert_array_equal(np.asarray(webp.convert("RGB")), np.asarray(image))


def test_decode_image_refuses_bad_data():
    with pytest.raises(ImageInputError, match="could not be decoded"):
        decode_image(b"this is not an image at all")
    with pytest.raises(ImageInputError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        decode_image(encode(noise(300, 300), "PNG")[:2000])
    with pytest.raises(ImageInputError, match="format GIF is not accepted"):
        decode_image(encode(noise(30, 30), "GIF"))


def test_decode_image_refuses_decompression_bombs():
    # 6000x6000 of one colour compresses to a few KB of PNG but decodes to 108 MB.
    bomb = encode(Image.new("RGB", (6000, 6000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageInputError, match="over the limit"):
        decode_image(bomb, max_pixels=20_000_000)


def test_device_patchify_equals_numpy_path():
    import torch

    from perception.vision.device_patchify import DevicePatchifier

    proc = ImageProcessor(max_pixels=AUTOGLM_MAX_PIXELS)
    shot = noise(1080, 2400, seed=10)
    resized = proc.resize(shot)
    assert resized.shape == (2352, 1036, 3) and resized.dtype == np.uint8
    pixels, grid = DevicePatchifier(proc)(resized)
    want = proc.preprocess(shot)
    assert grid == want.grid_thw
    assert pixels.dtype == torch.float32
    np.testing.assert_array_equal(pixels.numpy(), want.pixel_values)
    with pytest.raises(ValueError, match="multiples of 28"):
        DevicePatchifier(proc)(np.zeros((30, 56, 3), np.uint8))
