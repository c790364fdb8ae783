"""What the varied renderers share: colour ranges per colour name, image sizes, signed-distance
masks, and the camera-like finish (blur, noise, JPEG).

The grammar fixes a colour *name*, not an RGB value: each name gets a range in HSV that a person
still reads as that name, and every object draws its own value from it, so no single RGB value
(or renderer) stands for a colour. Everything here is NumPy + Pillow.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from .render import MODEL_RES

# name -> ((hue lo, hue hi) in degrees, (saturation lo, hi), (value lo, hi)); red wraps around 0.
COLOR_HSV = {
    "red": ((-9, 7), (0.62, 0.95), (0.55, 0.90)),
    "green": ((100, 140), (0.50, 0.90), (0.40, 0.80)),
    "blue": ((214, 238), (0.60, 0.90), (0.55, 0.95)),
    "yellow": ((48, 58), (0.70, 0.95), (0.82, 1.00)),
    "purple": ((270, 290), (0.50, 0.85), (0.45, 0.85)),
    "cyan": ((178, 190), (0.55, 0.90), (0.70, 0.95)),
    "brown": ((22, 33), (0.55, 0.85), (0.35, 0.55)),
    "gray": ((0, 360), (0.00, 0.06), (0.38, 0.62)),
}


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """Hue in degrees, s and v in [0, 1] -> RGB floats in [0, 1]."""
    h = (h % 360) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array(rgb, np.float32) + (v - c)


def sample_color(rng: np.random.Generator, name: str, ranges: dict = COLOR_HSV) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = ranges[name]
    return hsv_to_rgb(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def canvas_size(rng: np.random.Generator, lo: int = 160, hi: int = 512, max_aspect: float = 1.25) -> list[int]:
    """[W, H] of an image: the long side in [lo, hi], aspect up to max_aspect either way."""
    long = int(rng.integers(lo, hi + 1))
    aspect = float(np.exp(rng.uniform(0, np.log(max_aspect)))) if rng.random() < 0.6 else 1.0
    short = max(lo, int(round(long / aspect)))
    return [long, short] if rng.random() < 0.5 else [short, long]


def scales(wh) -> tuple[float, float, float]:
    """Canvas -> image scale per axis, and the isotropic scale shapes are drawn at (their
    geometric mean, so a round object stays round in a non-square image)."""
    sx, sy = wh[0] / MODEL_RES, wh[1] / MODEL_RES
    return sx, sy, float(np.sqrt(sx * sy))


def place_objects(scene: dict, rng: np.random.Generator, half_extents: dict, torus_b: tuple[float, float]) -> dict:
    """A copy of the scene with an image size, each torus's ring thickness and every object's box in canvas
    pixels (half-extents times r per shape, a torus's height times its thickness): the 2-D looks' placement."""
    out = {**scene, "objects": [dict(o) for o in scene["objects"]], "canvas": canvas_size(rng)}
    for o in out["objects"]:
        o["torus_b"] = round(float(rng.uniform(*torus_b)), 3) if o["shape"] == "torus" else 1.0
        hw, hh = half_extents[o["shape"]]
        o["box"] = canvas_box(o, hw, hh * o["torus_b"], out["canvas"])
    return out


def canvas_box(o: dict, hw: float, hh: float, wh, dy: float = 0.0) -> list[float]:
    """The canvas box of an object drawn round in the image with normalized half-extents
    hw, hh (times its r) and a vertical offset dy (times r) of its box centre."""
    sx, sy, s = scales(wh)
    x, y, r = o["x"], o["y"] + dy * o["r"] * s / sy, o["r"]
    b = [x - hw * r * s / sx, y - hh * r * s / sy, x + hw * r * s / sx, y + hh * r * s / sy]
    return [round(float(np.clip(v, 0, MODEL_RES)), 2) for v in b]


def local_grid(cx: float, cy: float, R: float, wh, pad: float = 1.3):
    """Pixel centres around (cx, cy) in units of R (u right, v down) and the image slice they cover."""
    x0, x1 = max(0, int(cx - pad * R)), min(wh[0], int(np.ceil(cx + pad * R)) + 1)
    y0, y1 = max(0, int(cy - pad * R)), min(wh[1], int(np.ceil(cy + pad * R)) + 1)
    v, u = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (u + 0.5 - cx) / R, (v + 0.5 - cy) / R, (slice(y0, y1), slice(x0, x1))


def sdf_polygon(u: np.ndarray, v: np.ndarray, pts) -> np.ndarray:
    """Signed distance (negative inside; exact inside, a lower bound outside) to a convex polygon
    whose corners are given in order, either way round."""
    d = np.full(u.shape, -np.inf, np.float32)
    n = len(pts)
    area = sum(pts[k][0] * pts[(k + 1) % n][1] - pts[(k + 1) % n][0] * pts[k][1] for k in range(n))
    if area < 0:  # make the edge normals point outwards
        pts = pts[::-1]
    for k in range(n):
        (ax, ay), (bx, by) = pts[k], pts[(k + 1) % n]
        ex, ey = bx - ax, by - ay
        ln = np.hypot(ex, ey)
        d = np.maximum(d, ((u - ax) * ey - (v - ay) * ex) / ln)
    return d


def sdf_ellipse(u, v, cu, cv, a, b):
    """Approximate signed distance to an axis-aligned ellipse (exact on the axes; fine for masks)."""
    q = np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)
    return (q - 1) * min(a, b)


def coverage(sdf: np.ndarray, R: float) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance in units of R."""
    return np.clip(0.5 - sdf * R, 0.0, 1.0)


def over(img: np.ndarray, sl, color: np.ndarray, alpha: np.ndarray) -> None:
    """Composite a colour field [h,w,3] (or one colour) over img[sl] with coverage alpha [h,w]."""
    a = alpha[..., None]
    img[sl] = img[sl] * (1 - a) + color * a


def finish(arr: np.ndarray, rng: np.random.Generator, blur=(0.0, 1.2), noise=(0.0, 0.035),
           jpeg_p: float = 0.5, quality=(35, 95)) -> Image.Image:
    """float RGB [H,W,3] in [0,1] -> a camera-like uint8 image: optional blur, sensor noise, JPEG."""
    s = rng.uniform(*noise)
    arr = arr + rng.normal(0, s, arr.shape).astype(np.float32) if s > 0 else arr
    img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    b = rng.uniform(*blur)
    if b > 0.25:
        img = img.filter(ImageFilter.GaussianBlur(b))
    if rng.random() < jpeg_p:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(*quality)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img
