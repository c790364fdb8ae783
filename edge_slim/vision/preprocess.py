"""Image decoding and preprocessing, shared by training and every runtime backend.

Training feeds its rendered scenes through `to_model_input` too, so what the model
saw while learning and what it sees at inference are the same function.

Speed (issue 19: preprocessing should stay a small share of a full `ask`): the image is resized once,
in uint8, by Pillow, and only then converted to float; no copy is made of an image that is already
upright RGB (arrays skip the EXIF step). A side of at least 2 x REDUCING_GAP times the
model's input (672 px for 96) is first reduced by an integer box factor (Pillow's `reducing_gap`; JPEG
files are instead decoded at 1/2, 1/4 or 1/8 scale, no smaller than REDUCING_GAP times the input), then
resized as before. Smaller images -- all that training sees (96 and 192 px) -- give bit-identical tensors;
larger ones differ by at most a few levels of 255 from a plain bilinear resize of the full image.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError

ImageLike = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

IMAGE_SIZE = 96
MEAN, STD = 0.5, 0.25
MAX_PIXELS = 80_000_000  # refuse decompression bombs before decoding them
REDUCING_GAP = 3.5       # box-reduce first only from 2 x 3.5 x the output size (see the module docstring)
ORIENTATION = 0x0112     # the EXIF orientation tag


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise BadInputError(f"image array has shape {a.shape}; expected HxW, HxWx3 or HxWx4")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise BadInputError("image array contains NaN or infinite values")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        scale = 255.0 if a.max() <= 1.0 else 1.0  # floats in [0, 1] or [0, 255]
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    elif a.dtype.kind in "iub":
        a = np.clip(a, 0, 255).astype(np.uint8)
    else:
        raise BadInputError(f"image array has unsupported dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def load_image(image: ImageLike) -> Image.Image:
    """Decode a path, bytes, PIL image or array into an upright RGB PIL image.

    Applies EXIF orientation; converts grayscale, palette, RGBA (over white), CMYK and
    16-bit images. Any failure is a BadInputError that says what was wrong.
    """
    img, _, _ = _decode(image, None)
    return img.copy() if img is image else img      # never hand back the caller's own image


def _decode(image: ImageLike, draft: int | None) -> tuple[Image.Image, tuple[int, int], tuple | None]:
    """-> (upright RGB image, its (width, height) at full resolution, the region of the image that holds
    the full picture when it was decoded at reduced scale, else None). With `draft`, a large JPEG file
    may be decoded at 1/2, 1/4 or 1/8 scale, no smaller than `draft` pixels on its short side."""
    if isinstance(image, np.ndarray):
        img = _from_array(image)
        if img.width < 1 or img.height < 1:
            raise BadInputError("image has no pixels")
        return _to_rgb(img), img.size, None      # arrays carry no EXIF
    if isinstance(image, Image.Image):
        img = image
    else:
        if isinstance(image, (bytes, bytearray)):
            if not image:
                raise BadInputError("image bytes are empty")
            src, name = io.BytesIO(bytes(image)), "image bytes"
        elif isinstance(image, (str, os.PathLike)):
            p = Path(image)
            if not p.is_file():
                raise BadInputError(f"image file not found: {p}")
            src, name = p, str(p)
        else:
            raise BadInputError(f"cannot read an image from {type(image).__name__}")
        try:
            img = Image.open(src)
            if img.width * img.height > MAX_PIXELS:
                raise BadInputError(f"{name}: {img.width}x{img.height} is too large (limit {MAX_PIXELS} pixels)")
            full, box = img.size, None
            if draft and img.format == "JPEG" and min(full) >= 2 * draft and _orientation(img) == 1:
                drafted = img.draft(None, (draft, draft))    # DCT-domain downscale while decoding
                box = drafted[1] if drafted else None
            img.load()
        except BadInputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise BadInputError(f"{name} is not a readable image ({e.__class__.__name__}: {e})") from None
        if img.size != full:
            return _to_rgb(img), full, box
    if img.width < 1 or img.height < 1:
        raise BadInputError("image has no pixels")
    img = _upright(img)
    return _to_rgb(img), img.size, None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not make a readable image unusable
        return 1


def _upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation; the image itself (no copy) when it is already upright."""
    if _orientation(img) in (1, 0):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "F":
        img = _from_array(np.asarray(img))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def prepare(image: ImageLike, size: int = IMAGE_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Any image -> (float32 [3, size, size] resized (bilinear) and normalised, (width, height) decoded)."""
    img, wh, box = _decode(image, int(size * REDUCING_GAP))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    return normalize(np.asarray(img)), wh


def to_model_input(image: ImageLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """Any image -> float32 [3, size, size], resized (bilinear) and normalised."""
    return prepare(image, size)[0]


def normalize(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] with the model's mean and std."""
    x = rgb_u8.astype(np.float32) * (1.0 / 255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
