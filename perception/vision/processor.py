"""GLM-4.1V image preprocessing: decode, smart-resize, normalise, cut into merge-ordered patches.

Numerics follow transformers' Glm4vImageProcessor on its PIL path (the one transformers 5.23
takes when torchvision is absent, and the one this project's tests compare against): pillow
bicubic resize of the uint8 RGB image, x/255 computed in float64 then stored as float32,
(x - mean) / std in float32. The torchvision path (transformers' default when torchvision is
installed) resizes with an antialiased bicubic written to mimic pillow; it may differ by one
uint8 level at some pixels.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD and Glm4vImageProcessor class defaults.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 112 * 112
DEFAULT_MAX_PIXELS = 28 * 28 * 15000
MAX_ASPECT_RATIO = 200
# Decoded-size ceiling for untrusted uploads: 8K x 8K is far above any phone screenshot, and
# it stops a tiny compressed file from expanding into gigabytes of pixels.
DEFAULT_MAX_DECODED_PIXELS = 8192 * 8192
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


class ImageInputError(ValueError):
    """The image cannot be used: undecodable, too small, too large or too elongated.

    The gateway returns the message as an HTTP 400, so it says what is wrong in user terms.
    """


@dataclass(frozen=True)
class ProcessedImage:
    pixel_values: np.ndarray           # float32 [n_patches, C*T*patch*patch]
    grid_thw: tuple[int, int, int]     # (1, resized_h / patch, resized_w / patch)
    merge_size: int = 2

    @property
    def num_patches(self) -> int:
        return self.grid_thw[0] * self.grid_thw[1] * self.grid_thw[2]

    @property
    def num_tokens(self) -> int:
        return self.num_patches // (self.merge_size * self.merge_size)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_DECODED_PIXELS) -> Image.Image:
    """Decode PNG / JPEG / WebP bytes into a loaded PIL image, refusing decompression bombs."""
    if not data:
        raise ImageInputError("image data is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"image is too large to decode ({exc})") from exc
    except Exception as exc:  # pillow raises several types for garbage input
        raise ImageInputError(
            f"image data could not be decoded (expected {'/'.join(ACCEPTED_FORMATS)}): {exc}"
        ) from exc
    if image.format not in ACCEPTED_FORMATS:
        raise ImageInputError(
            f"image format {image.format} is not accepted; send {'/'.join(ACCEPTED_FORMATS)}")
    width, height = image.size
    # The header gives the size before any pixel is decoded: check it first.
    if width * height > max_pixels:
        raise ImageInputError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels")
    try:
        image.load()
    except Exception as exc:
        raise ImageInputError(f"image data is truncated or corrupt: {exc}") from exc
    return image


def smart_resize(height: int, width: int, *, factor: int = 28, temporal_factor: int = 2,
                 min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, pixel budget checked on T*H*W.

    A still image counts as `temporal_factor` frames, so the limits apply to 2*H*W (the
    budget is effectively halved), exactly as Glm4vImageProcessor calls smart_resize.
    """
    if height < factor or width < factor:
        # transformers 5.23 silently upscales such images; we refuse them, since nothing
        # legible survives and the request is almost certainly a mistake.
        raise ImageInputError(
            f"image is {width}x{height}; each side must be at least {factor} pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageInputError(
            f"image is {width}x{height}, aspect ratio {ratio:.1f}; at most {MAX_ASPECT_RATIO} "
            f"is accepted")
    frames = temporal_factor
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """RGB PIL image; transparency is composited onto white as transformers does."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_rgb(image))
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if _opaque_rgba(image):
        # Compositing onto white changes nothing. Android's screencap writes RGBA with every
        # alpha at 255; dropping alpha is 5 ms of a 1080x2400 screenshot against 27 ms for
        # the composite (2-core VM, python -m benchmarks.screenshot_prep).
        return image.convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def rgb_array(image: Image.Image) -> np.ndarray:
    """to_rgb(image) as a uint8 (H, W, 3) array. An opaque RGBA image is packed straight to
    RGB, one pass instead of a conversion and a copy (5 against 18 ms for a screenshot,
    benchmarks.screenshot_prep)."""
    if _opaque_rgba(image):
        return np.frombuffer(image.tobytes("raw", "RGB"), dtype=np.uint8).reshape(
            image.height, image.width, 3)
    return np.asarray(to_rgb(image), dtype=np.uint8)


def _opaque_rgba(image: Image.Image) -> bool:
    return image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ImageInputError(f"image arrays must be uint8 (H, W[, C]), got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageInputError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), "
                              f"got shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        if array[..., 3].min() == 255:     # opaque: nothing to composite
            return np.ascontiguousarray(array[..., :3])
        alpha = array[..., 3:4] / 255
        return np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


class ImageProcessor:
    """Turns one image into the vision tower's input: merge-ordered patches and grid_thw."""

    def __init__(self, *, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS, patch_size: int = 14,
                 temporal_patch_size: int = 2, merge_size: int = 2,
                 image_mean: tuple[float, ...] = CLIP_MEAN,
                 image_std: tuple[float, ...] = CLIP_STD, rescale_factor: float = 1 / 255):
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel")
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.patch_size = int(patch_size)
        self.temporal_patch_size = int(temporal_patch_size)
        self.merge_size = int(merge_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.rescale_factor = float(rescale_factor)
        self._lut = self._normalisation_table()

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_pixels: int | None = None) -> ImageProcessor:
        """Settings from the model's preprocessor_config.json (if any); `max_pixels` overrides."""
        path = Path(model_dir) / "preprocessor_config.json"
        raw = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        kwargs = settings_from_preprocessor_config(raw)
        if max_pixels is not None:
            kwargs["max_pixels"] = int(max_pixels)
            kwargs["min_pixels"] = min(kwargs.get("min_pixels", DEFAULT_MIN_PIXELS), int(max_pixels))
        return cls(**kwargs)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the image is resized to."""
        return smart_resize(height, width, factor=self.factor,
                            temporal_factor=self.temporal_patch_size,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def num_image_tokens(self, width: int, height: int) -> int:
        """Tokens the decoder sees for an image of this size; no pixel work."""
        h, w = self.resized_size(width, height)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size ** 2)

    def preprocess(self, image: Image.Image | np.ndarray) -> ProcessedImage:
        pixels = self.resize(image)
        height, width = pixels.shape[:2]
        return ProcessedImage(self._patchify(pixels), (1, height // self.patch_size,
                                                       width // self.patch_size), self.merge_size)

    def resize(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The RGB image resized to its smart_resize target: uint8 (H, W, 3).

        The first half of `preprocess`; a stage that normalises and patchifies on the GPU
        (perception.vision.device_patchify) ships these bytes instead of 8x more floats.
        """
        rgb = to_rgb(image)
        return self.resize_to(rgb, *self.resized_size(*rgb.size))

    @staticmethod
    def resize_to(image: Image.Image | np.ndarray, height: int, width: int) -> np.ndarray:
        """An RGB image (PIL, or uint8 [H, W, 3]) at (height, width), Pillow's bicubic:
        uint8 [height, width, 3], writable, so torch.from_numpy takes it without a copy."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if (width, height) != image.size:
            image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
        return np.array(image)

    @property
    def normalisation_table(self) -> np.ndarray:
        """float32 [3 * 256]: the normalised value of channel c, level v at c * 256 + v."""
        return self._lut

    def _normalisation_table(self) -> np.ndarray:
        """float32 value of every (channel, uint8 level), computed with transformers' exact
        operation order, so normalising is a table lookup and still bit-identical."""
        levels = (np.arange(256, dtype=np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None]
        return ((levels[None, :] - mean) / std).astype(np.float32).reshape(-1)

    def _patchify(self, pixels: np.ndarray) -> np.ndarray:
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        h, w, c = pixels.shape
        gh, gw = h // p, w // p
        # Index into the (channel, level) table, rearranged to
        # (block row, block col, row in block, col in block, C, py, px) before the lookup so
        # the float output is written once, already in patch order.
        index = pixels.astype(np.uint16) + (np.arange(c, dtype=np.uint16) * 256)
        index = index.reshape(gh // m, m, p, gw // m, m, p, c).transpose(0, 3, 1, 4, 6, 2, 5)
        patches = np.take(self._lut, index)  # (gh/m, gw/m, m, m, C, p, p)
        # A still image is its own second frame: repeat along T inside each patch (C, T, p, p).
        patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
        return np.ascontiguousarray(patches).reshape(gh * gw, c * t * p * p)


def settings_from_preprocessor_config(raw: dict) -> dict:
    """ImageProcessor keyword arguments from a preprocessor_config.json dict.

    Pixel limits come from top-level min_pixels/max_pixels (older Qwen/GLM files) or from
    size {shortest_edge, longest_edge} / {min_pixels, max_pixels}; the top level wins.
    """
    size = raw.get("size") or {}
    out: dict = {}
    min_pixels = raw.get("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
    max_pixels = raw.get("max_pixels", size.get("longest_edge", size.get("max_pixels")))
    if min_pixels is not None:
        out["min_pixels"] = int(min_pixels)
    if max_pixels is not None:
        out["max_pixels"] = int(max_pixels)
    for key in ("patch_size", "temporal_patch_size", "merge_size"):
        if raw.get(key) is not None:
            out[key] = int(raw[key])
    if raw.get("image_mean") is not None:
        out["image_mean"] = tuple(raw["image_mean"])
    if raw.get("image_std") is not None:
        out["image_std"] = tuple(raw["image_std"])
    if raw.get("rescale_factor") is not None:
        out["rescale_factor"] = float(raw["rescale_factor"])
    resample = raw.get("resample")
    if resample is not None and int(resample) != int(Image.Resampling.BICUBIC):
        raise ValueError(f"preprocessor_config.json asks for resample={resample}; this runtime "
                         f"implements GLM-4.1V's bicubic ({int(Image.Resampling.BICUBIC)}) only")
    return out
