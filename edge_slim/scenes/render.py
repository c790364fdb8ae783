"""Draw a scene description as an RGB image with NumPy and Pillow only.

Objects are drawn far-to-near (by y) so that lower objects partially occlude
higher ones; backgrounds are textured and noisy and the lighting is jittered,
so the model cannot key on flat colours.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .grammar import COLORS

MODEL_RES = 96  # scene coordinates are in pixels of a 96x96 canvas


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(150, 225) + rng.uniform(-18, 18, size=3)
    low = rng.normal(0, 14, size=(6, 6, 3)).astype(np.float32)
    low = np.stack([np.asarray(Image.fromarray(low[..., c]).resize((size, size), Image.BICUBIC))
                    for c in range(3)], -1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = base + low
    kind = rng.integers(4)
    amp = rng.uniform(6, 16)
    if kind == 1:  # stripes at a random angle
        a, f = rng.uniform(0, np.pi), rng.uniform(4, 12)
        img += (amp * np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a))))[..., None]
    elif kind == 2:  # checker
        f = int(rng.integers(3, 9))
        img += (amp * (((xx * f).astype(int) + (yy * f).astype(int)) % 2 * 2 - 1))[..., None]
    elif kind == 3:  # speckle
        img += rng.normal(0, amp, size=(size, size, 1))
    a = rng.uniform(0, 2 * np.pi)  # a lighting gradient
    img *= (1 + rng.uniform(0.05, 0.25) * ((xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a)))[..., None]
    return img


def _shade(rgb: np.ndarray, k: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(rgb * k, 0, 255))


def _draw_object(draw: ImageDraw.ImageDraw, o: dict, rgb: np.ndarray, s: float) -> None:
    x, y, r = o["x"] * s, o["y"] * s, o["r"] * s
    face, light, dark = _shade(rgb, 1.0), _shade(rgb, 1.3), _shade(rgb, 0.55)
    w = max(1, round(s))
    shape = o["shape"]
    if shape == "cube":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=face, outline=dark, width=w)
        draw.rectangle([x - r + w, y - r + w, x + r - w, y - 0.45 * r], fill=light)
    elif shape == "sphere":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=face, outline=dark, width=w)
        draw.ellipse([x - 0.55 * r, y - 0.6 * r, x - 0.05 * r, y - 0.1 * r], fill=light)
    elif shape == "cylinder":
        e, hw = 0.35 * r, 0.8 * r
        draw.ellipse([x - hw, y + r - 2 * e, x + hw, y + r], fill=face, outline=dark, width=w)
        draw.rectangle([x - hw, y - r + e, x + hw, y + r - e], fill=face)
        draw.line([x - hw, y - r + e, x - hw, y + r - e], fill=dark, width=w)
        draw.line([x + hw, y - r + e, x + hw, y + r - e], fill=dark, width=w)
        draw.ellipse([x - hw, y - r, x + hw, y - r + 2 * e], fill=light, outline=dark, width=w)
    elif shape == "cone":
        e = 0.3 * r
        draw.ellipse([x - r, y + r - 2 * e, x + r, y + r], fill=face, outline=dark, width=w)
        draw.polygon([(x, y - r), (x - r, y + r - e), (x + r, y + r - e)], fill=face, outline=dark)
        draw.line([(x, y - r), (x + 0.3 * r, y + r - e)], fill=light, width=w)
    elif shape == "torus":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=dark, width=max(1, round(0.5 * r)))
        draw.ellipse([x - r + w, y - r + w, x + r - w, y + r - w], outline=face,
                     width=max(1, round(0.5 * r) - 2 * w))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: dict, size: int = MODEL_RES) -> Image.Image:
    """Render `scene` (as made by generate.sample_scene) to a size x size RGB image."""
    rng = np.random.default_rng(scene["render_seed"])
    s = size / MODEL_RES
    img = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    shadow = Image.new("L", (size, size), 0)
    sd = ImageDraw.Draw(shadow)
    for o in scene["objects"]:
        x, y, r = o["x"] * s, o["y"] * s, o["r"] * s
        sd.ellipse([x - r + 2 * s, y + 0.2 * r, x + r + 3 * s, y + r + 3 * s], fill=110)
    shadow = shadow.filter(ImageFilter.GaussianBlur(1.5 * s))
    img = Image.composite(Image.new("RGB", (size, size), (30, 30, 30)), img, shadow)
    draw = ImageDraw.Draw(img)
    for o in sorted(scene["objects"], key=lambda o: o["y"]):
        rgb = np.array(COLORS[o["color"]], np.float32) * o["light"] + rng.normal(0, 6, 3)
        _draw_object(draw, o, rgb, s)
    arr = np.asarray(img).astype(np.float32)
    arr = arr * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)  # global exposure jitter
    arr += rng.normal(0, rng.uniform(2, 7), arr.shape)  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
