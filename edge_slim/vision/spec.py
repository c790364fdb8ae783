"""Image preprocessing for bring-your-own image models, as a stated spec (`--preprocess`).

A user's model expects its own size, normalization, channel order and layout; the spec says which, is
stored in the bundle manifest (`preprocess`, with "kind": "image"), and turns an image file into the
model's input tensor for `edge-slim run` and for quantization calibration folders:

    "size=48x192 mean=0.5,0.5,0.5 std=0.5,0.5,0.5"          (keys separated by spaces or ';')

    size=HxW        the input's height and width (required)
    resize=stretch  stretch to HxW (default), or `pad`: keep the aspect ratio, scale to height H (or
                    width W if that is tighter), pad right and bottom with zeros (text-line recognizers)
    scale=1/255     pixel values 0..255 times this (default 1/255)
    mean=, std=     per channel (one value or three), applied after scale: (x * scale - mean) / std
    color=rgb|bgr   channel order (default rgb)
    layout=nchw|nhwc  (default nchw); a batch axis of 1 is added

Decoding (EXIF orientation, size limits, palette/alpha handling) is load_image's, as for SlimPajama.
"""
from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from .preprocess import ImageLike, load_image

KEYS = ("size", "resize", "scale", "mean", "std", "color", "layout")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def parse_spec(text: str) -> dict:
    """'size=48x192 mean=0.5 std=0.5' -> the manifest form {"kind": "image", "size": [48, 192], ...}."""
    spec = {"kind": "image", "size": None, "resize": "stretch", "scale": 1 / 255, "mean": [0.0], "std": [1.0],
            "color": "RGB", "layout": "NCHW"}
    for item in text.replace(";", " ").split():
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise BadInputError(f"--preprocess {item!r}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
        try:
            if key == "size":
                h, w = (int(v) for v in value.lower().split("x"))
                if h < 1 or w < 1:
                    raise ValueError
                spec["size"] = [h, w]
            elif key == "scale":
                num, _, den = value.partition("/")
                spec["scale"] = float(num) / (float(den) if den else 1.0)
            elif key in ("mean", "std"):
                vals = [float(v) for v in value.split(",")]
                if len(vals) not in (1, 3) or (key == "std" and min(vals) <= 0):
                    raise ValueError
                spec[key] = vals
            elif key == "resize":
                if value not in ("stretch", "pad"):
                    raise ValueError
                spec[key] = value
            elif key == "color":
                if value.upper() not in ("RGB", "BGR"):
                    raise ValueError
                spec[key] = value.upper()
            else:
                if value.upper() not in ("NCHW", "NHWC"):
                    raise ValueError
                spec[key] = value.upper()
        except ValueError:
            raise BadInputError(f"--preprocess {item!r}: bad value for {key} (see edge_slim/vision/spec.py)") from None
    if spec["size"] is None:
        raise BadInputError("--preprocess needs size=HxW (the model input's height and width)")
    return spec


def check_spec(spec: dict) -> dict:
    """A manifest's stored spec, checked (it comes from a file a user may have edited)."""
    if not isinstance(spec, dict) or spec.get("kind") != "image" or not isinstance(spec.get("size"), list):
        raise BadInputError("the bundle's preprocess entry is not an image spec; pass --preprocess")
    return spec


def image_tensor(image: ImageLike, spec: dict) -> np.ndarray:
    """One image -> [1, 3, H, W] (or [1, H, W, 3]) float32, as the spec says."""
    from PIL import Image
    spec = check_spec(spec)
    h, w = spec["size"]
    img = load_image(image).convert("RGB")
    if spec["resize"] == "pad":
        r = min(h / img.height, w / img.width)
        nh, nw = max(1, round(img.height * r)), max(1, round(img.width * r))
        canvas = np.zeros((h, w, 3), np.float32)
        canvas[:nh, :nw] = np.asarray(img.resize((nw, nh), Image.BILINEAR), np.float32)
        x = canvas
    else:
        x = np.asarray(img.resize((w, h), Image.BILINEAR), np.float32)
    if spec["color"] == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    x = (x * np.float32(spec["scale"]) - mean) / std
    if spec["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def is_image_file(path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)
