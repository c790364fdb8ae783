"""The "varied2d" renderer: the project's 2-D drawing made varied in everything the grammar leaves open.

Per scene it draws an image size and aspect (160-512 px), a background (plain, wall and floor,
checkered or wooden floor, blotchy texture; light or dark, never strongly coloured), a light
direction, and per object a colour value inside its colour name (paint.COLOR_HSV), matte or
metallic shading with a highlight, a soft shadow, optional outline and a cube drawn face-on or
in three-quarter view. The finish adds blur, sensor noise and JPEG. Shapes are anti-aliased
signed-distance masks in NumPy; objects are drawn far-to-near (by y), as the flat renderer does.

Geometry is the grammar's: an object's centre is its scene (x, y) and its half-extent r (in
canvas pixels; drawn round at the geometric-mean scale on non-square images), so sizes and
relations are unchanged; `place` writes the box of what is drawn.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from . import paint as P

# Normalized half-extents (times r) of each shape's box as drawn here.
HALF_EXTENTS = {"cube": (1.0, 1.0), "sphere": (1.0, 1.0), "cylinder": (0.8, 1.0), "cone": (1.0, 1.0),
                "torus": (1.0, 1.0)}


def _rng(scene: dict, stream: int) -> np.random.Generator:
    return np.random.default_rng([*scene["render_seed"], 21, stream])


def place(scene: dict) -> dict:
    """The scene with this look's image size, per-object style and boxes (deterministic)."""
    return P.place_objects(scene, _rng(scene, 0), HALF_EXTENTS, torus_b=(0.75, 1.0))


# ---- background ----------------------------------------------------------------------------

def _neutral(rng, dark: bool) -> np.ndarray:
    v = rng.uniform(0.12, 0.30) if dark else rng.uniform(0.72, 0.95)
    return P.hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.18), v)


def _blotches(rng, wh, amp) -> np.ndarray:
    k = int(rng.integers(3, 9))
    low = rng.normal(0, amp, size=(k, k)).astype(np.float32)
    return np.asarray(Image.fromarray(low).resize(tuple(wh), Image.BICUBIC))[..., None]


def background(rng: np.random.Generator, wh) -> np.ndarray:
    W, H = wh
    dark = rng.random() < 0.2
    a, b = _neutral(rng, dark), _neutral(rng, dark)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy, xx = yy / H, xx / W
    kind = int(rng.integers(5))
    img = np.broadcast_to(a, (H, W, 3)).astype(np.float32).copy()
    if kind == 1:  # a wall above a floor, with a soft horizon
        t = np.clip((yy - rng.uniform(0.0, 0.4)) / rng.uniform(0.02, 0.15), 0, 1)[..., None]
        img = a * (1 - t) + b * t
    elif kind == 2:  # a checkered floor, low contrast
        f = rng.uniform(4, 14)
        ang = rng.uniform(0, np.pi)
        cu, cv = xx * np.cos(ang) + yy * np.sin(ang), -xx * np.sin(ang) + yy * np.cos(ang)
        chk = ((np.floor(cu * f) + np.floor(cv * f)) % 2)[..., None]
        img = a * (1 - chk) + (a * 0.75 + b * 0.25) * chk
    elif kind == 3:  # wood-like grain
        f, ang = rng.uniform(8, 30), rng.uniform(0, np.pi)
        g = np.sin(2 * np.pi * f * (xx * np.cos(ang) + yy * np.sin(ang)) + 3 * _blotches(rng, wh, 1.0)[..., 0])
        img = img * (1 + rng.uniform(0.03, 0.08) * g[..., None])
    elif kind == 4:  # blotchy texture
        img = img + _blotches(rng, wh, rng.uniform(0.03, 0.08))
    ang = rng.uniform(0, 2 * np.pi)  # a lighting gradient across the image
    img = img * (1 + rng.uniform(0.0, 0.35) * ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


# ---- shading -------------------------------------------------------------------------------

def _light(rng) -> np.ndarray:
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(25), np.radians(70))
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az) - 0.3, np.sin(el)], np.float32) / \
        np.linalg.norm([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az) - 0.3, np.sin(el)])


def shade(base: np.ndarray, n: np.ndarray, L: np.ndarray, mat: dict) -> np.ndarray:
    """Colour field for normals n [...,3] (u right, v down, z to the viewer)."""
    ndl = np.clip(n @ L, 0, 1)[..., None]
    h = L + np.array([0, 0, 1], np.float32)
    h /= np.linalg.norm(h)
    spec = np.clip(n @ h, 0, 1)[..., None] ** mat["shine"]
    if mat["metal"]:
        env = 0.5 + 0.5 * np.tanh(-3 * n[..., 1:2])  # a bright sky above, a darker floor below
        c = base * (0.18 + 0.5 * ndl + 0.45 * env) + mat["spec"] * spec
    else:
        c = base * (mat["ambient"] + (1 - mat["ambient"]) * ndl) + mat["spec"] * spec
    return c


def _material(rng) -> dict:
    if rng.random() < 0.4:
        return {"metal": True, "shine": rng.uniform(40, 140), "spec": rng.uniform(0.6, 1.0), "ambient": 0.2}
    return {"metal": False, "shine": rng.uniform(6, 30), "spec": rng.uniform(0.03, 0.3),
            "ambient": rng.uniform(0.3, 0.5)}


def _flat_normal(shape, nx, ny, nz):
    n = np.array([nx, ny, nz], np.float32)
    return np.broadcast_to(n / np.linalg.norm(n), shape + (3,))


def parts(o: dict, u: np.ndarray, v: np.ndarray, style: dict):
    """Yield (signed distance, normals) of an object's visible parts, back to front."""
    shape = o["shape"]
    if shape == "sphere":
        rr = np.minimum(u * u + v * v, 1.0)
        yield np.sqrt(u * u + v * v) - 1, np.stack([u, v, np.sqrt(1 - rr)], -1)
    elif shape == "cube" and not style["oblique"]:
        yield P.sdf_polygon(u, v, [(-1, -1), (-1, 1), (1, 1), (1, -1)]), _flat_normal(u.shape, 0.1, -0.1, 1)
    elif shape == "cube":  # three-quarter view: front face, top and one side
        d, sgn = 0.42, style["side"]
        f0, f1 = (-1, 1 - d) if sgn > 0 else (-1 + d, 1)  # the front face's left and right edges
        edge = f1 if sgn > 0 else f0
        top = [(f0, -1 + d), (f1, -1 + d), (f1 + sgn * d, -1), (f0 + sgn * d, -1)]
        side = [(edge, -1 + d), (edge, 1), (edge + sgn * d, 1 - d), (edge + sgn * d, -1)]
        yield P.sdf_polygon(u, v, top), _flat_normal(u.shape, 0, -1, 0.6)
        yield P.sdf_polygon(u, v, side), _flat_normal(u.shape, sgn, 0, 0.8)
        yield P.sdf_polygon(u, v, [(f0, -1 + d), (f0, 1), (f1, 1), (f1, -1 + d)]), _flat_normal(u.shape, 0, 0, 1)
    elif shape == "cylinder":
        e, a = style["ellipse"], 0.8
        body = P.sdf_polygon(u, v, [(-a, -1 + e), (-a, 1 - e), (a, 1 - e), (a, -1 + e)])
        bottom = P.sdf_ellipse(u, v, 0, 1 - e, a, e)
        cu = np.clip(u / a, -1, 1)
        n = np.stack([cu, np.zeros_like(u), np.sqrt(1 - cu * cu)], -1)
        yield np.minimum(body, bottom), n
        yield P.sdf_ellipse(u, v, 0, -1 + e, a, e), _flat_normal(u.shape, 0, -1, 0.5)
    elif shape == "cone":
        e = style["ellipse"] * 0.85
        tri = P.sdf_polygon(u, v, [(0, -1), (-1, 1 - e), (1, 1 - e)])
        base = P.sdf_ellipse(u, v, 0, 1 - e, 1, e)
        w = np.clip(u / np.maximum(0.05, (v + 1) / (2 - e)), -1, 1)
        n = np.stack([w * 0.9, np.full_like(u, -0.45), np.sqrt(np.clip(1 - 0.81 * w * w, 0, 1))], -1)
        yield np.minimum(tri, np.maximum(base, -v + (1 - e) - 1e-3)), n
    elif shape == "torus":
        b, t = o["torus_b"], style["tube"]
        q = np.sqrt(u * u + (v / b) ** 2)
        s = np.clip((q - (1 - t)) / t, -1, 1)
        ang_u, ang_v = u / np.maximum(q, 1e-3), v / b / np.maximum(q, 1e-3)
        n = np.stack([s * ang_u, s * ang_v, np.sqrt(1 - s * s)], -1)
        yield (np.abs(q - (1 - t)) - t) * b, n
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw(scene: dict) -> Image.Image:
    """Render a scene placed by `place` (its canvas size, styles and boxes)."""
    rng = _rng(scene, 1)
    wh = scene["canvas"]
    sx, sy, s = P.scales(wh)
    img = background(rng, wh)
    L = _light(rng)
    shadow_k, soft = rng.uniform(0.25, 0.6), rng.uniform(0.15, 0.45)
    objs = sorted(scene["objects"], key=lambda o: o["y"])
    for o in objs:  # soft shadows on the floor, cast away from the light
        R = o["r"] * s
        cx, cy = o["x"] * sx - L[0] * 0.6 * R, o["y"] * sy + 0.75 * R - L[1] * 0.4 * R
        u, v, sl = P.local_grid(cx, cy, R, wh, pad=1.8)
        d = P.sdf_ellipse(u, v, 0, 0, 1.05, 0.42)
        img[sl] *= (1 - shadow_k * np.clip(0.5 - d / soft, 0, 1))[..., None]
    for o in objs:
        R = o["r"] * s
        style = {"oblique": rng.random() < 0.5, "side": 1 if rng.random() < 0.5 else -1,
                 "ellipse": rng.uniform(0.22, 0.4), "tube": rng.uniform(0.24, 0.34)}
        base = P.sample_color(rng, o["color"])
        mat = _material(rng)
        outline = rng.uniform(0.3, 0.6) if rng.random() < 0.35 else 0.0
        u, v, sl = P.local_grid(o["x"] * sx, o["y"] * sy, R, wh)
        for sdf, n in parts(o, u, v, style):
            a = P.coverage(sdf, R)
            img[sl] = img[sl] * (1 - a[..., None]) + np.clip(shade(base, n, L, mat), 0, 1.2) * a[..., None]
            if outline:
                ring = a - P.coverage(sdf + 1.2 / R, R)
                P.over(img, sl, base * outline, np.clip(ring, 0, 1))
    img = img * rng.uniform(0.85, 1.12)  # exposure
    return P.finish(img, rng)
