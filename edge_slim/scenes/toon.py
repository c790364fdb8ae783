"""The "unseen" renderer: a hand-drawn cartoon look kept out of training, to measure generalization.

It differs from every training look on purpose: paper backgrounds (grain, ruled or squared lines),
ink outlines that wobble like a pen, flat cel-shaded fills (two or three hard-edged tones, no
gradients, no reflections), hatched shadows, a cube drawn isometrically (a hexagon of three faces),
a tilted ring for the torus, and its own palette inside each colour name (MARKER_HSV: marker-pen
values that overlap the training ranges only in part, still read as the same names by a person).
Centres, half-extents and relations are the grammar's, as in the other renderers.
"""
from __future__ import annotations

import numpy as np

from . import paint as P

MARKER_HSV = {
    "red": ((354, 362), (0.78, 0.92), (0.82, 0.96)),
    "green": ((86, 100), (0.62, 0.82), (0.62, 0.80)),
    "blue": ((226, 246), (0.68, 0.85), (0.70, 0.90)),
    "yellow": ((44, 52), (0.80, 0.95), (0.92, 1.00)),
    "purple": ((272, 286), (0.55, 0.75), (0.55, 0.75)),
    "cyan": ((170, 178), (0.60, 0.80), (0.74, 0.90)),
    "brown": ((17, 27), (0.60, 0.80), (0.42, 0.56)),
    "gray": ((0, 360), (0.03, 0.09), (0.55, 0.72)),
}
HALF_EXTENTS = {"cube": (1.0, 1.0), "sphere": (1.0, 1.0), "cylinder": (0.85, 1.0), "cone": (1.0, 1.0),
                "torus": (1.0, 1.0)}  # a torus's height is further scaled by its ring thickness


def _rng(scene: dict, stream: int) -> np.random.Generator:
    return np.random.default_rng([*scene["render_seed"], 41, stream])


def place(scene: dict) -> dict:
    return P.place_objects(scene, _rng(scene, 0), HALF_EXTENTS, torus_b=(0.55, 0.75))


def paper(rng, wh) -> np.ndarray:
    W, H = wh
    tint = P.hsv_to_rgb(rng.uniform(30, 60), rng.uniform(0.03, 0.12), rng.uniform(0.88, 0.98))
    img = np.broadcast_to(tint, (H, W, 3)).astype(np.float32).copy()
    img *= (1 - np.abs(rng.normal(0, 0.025, (H, W, 1)))).astype(np.float32)  # paper grain
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    step = rng.uniform(14, 30) * max(W, H) / 256
    ink = P.hsv_to_rgb(rng.uniform(190, 230), 0.35, 0.75)
    lines = np.abs(((yy + rng.uniform(0, step)) % step) - step / 2) > step / 2 - 0.7
    if rng.random() < 0.5:  # squared paper
        lines |= np.abs(((xx + rng.uniform(0, step)) % step) - step / 2) > step / 2 - 0.7
    if rng.random() < 0.8:
        img[lines] = img[lines] * 0.6 + ink * 0.4
    return img


def _wobble(rng, u, v, R):
    a, f, ph = rng.uniform(0.4, 0.9) / R, rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi, 2)
    return u + a * np.sin(f * v * np.pi + ph[0]), v + a * np.sin(f * u * np.pi + ph[1])


def toon_parts(o: dict, u, v, light_left: bool):
    """(signed distance, tone) per part, back to front; tone 0 = lit, 1 = mid, 2 = shade."""
    shape, lit, shade = o["shape"], 0, 2
    if not light_left:
        u = -u  # mirror the drawing so the light comes from the other side
    if shape == "sphere":
        d = np.hypot(u, v) - 1
        yield d, np.where(np.hypot(u + 0.35, v + 0.35) < 1.05, lit, 1)
        yield np.hypot(u + 0.45, v + 0.45) - 0.16, np.full(u.shape, -1)  # a white glint
    elif shape == "cube":  # isometric: a hexagon of top, left and right faces
        h = 0.5
        top = [(0, -1), (1, -h), (0, 0), (-1, -h)]
        left = [(-1, -h), (0, 0), (0, 1), (-1, h)]
        right = [(0, 0), (1, -h), (1, h), (0, 1)]
        for pts, tone in ((top, lit), (left, 1), (right, shade)):
            yield P.sdf_polygon(u, v, pts), np.full(u.shape, tone)
    elif shape == "cylinder":
        a, e = 0.85, 0.3
        body = np.minimum(P.sdf_polygon(u, v, [(-a, -1 + e), (a, -1 + e), (a, 1 - e), (-a, 1 - e)]),
                          np.maximum(P.sdf_ellipse(u, v, 0, 1 - e, a, e), (1 - e) - v))
        yield body, np.where(u < 0.25 * a, 1, shade)
        yield P.sdf_ellipse(u, v, 0, -1 + e, a, e), np.full(u.shape, lit)
    elif shape == "cone":
        e = 0.25
        tri = P.sdf_polygon(u, v, [(0, -1), (1, 1 - e), (-1, 1 - e)])
        d = np.minimum(tri, np.maximum(P.sdf_ellipse(u, v, 0, 1 - e, 1, e), (1 - e) - v))
        yield d, np.where(u < 0.15 * (v + 1), lit, shade)
    elif shape == "torus":
        b = o["torus_b"]
        q = np.hypot(u, v / b)
        t = 0.3
        yield (np.abs(q - (1 - t)) - t) * b, np.where(v < 0, lit, 1)
    else:
        raise ValueError(shape)


def draw(scene: dict):
    rng = _rng(scene, 1)
    wh = scene["canvas"]
    sx, sy, s = P.scales(wh)
    img = paper(rng, wh)
    ink = P.hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.4), rng.uniform(0.05, 0.2))
    width = rng.uniform(1.2, 2.6) * max(wh) / 256
    light_left = rng.random() < 0.7
    objs = sorted(scene["objects"], key=lambda o: o["y"])
    for o in objs:  # hatched shadows to one side of the object's foot
        R = o["r"] * s
        side = 1 if light_left else -1
        u, v, sl = P.local_grid(o["x"] * sx + side * 0.45 * R, o["y"] * sy + 0.85 * R, R, wh, pad=1.6)
        inside = P.sdf_ellipse(u, v, 0, 0, 1.1, 0.35) < 0
        hatch = np.abs(((u + v) * R / (2.2 * width)) % 2 - 1) < 0.35
        P.over(img, sl, ink, (inside & hatch).astype(np.float32) * 0.55)
    for o in objs:
        R = o["r"] * s
        base = P.sample_color(rng, o["color"], MARKER_HSV)
        tones = {-1: np.ones(3, np.float32), 0: np.clip(base * 1.18 + 0.06, 0, 1), 1: base, 2: base * 0.68}
        u, v, sl = P.local_grid(o["x"] * sx, o["y"] * sy, R, wh)
        u, v = _wobble(rng, u, v, R)
        for sdf, tone in toon_parts(o, u, v, light_left):
            col = np.zeros(u.shape + (3,), np.float32)
            for k, c in tones.items():
                col[tone == k] = c
            P.over(img, sl, col, P.coverage(sdf, R))
            if (tone == -1).all():  # a glint has no outline
                continue
            P.over(img, sl, ink, np.clip(P.coverage(sdf, R) - P.coverage(sdf + width / R, R), 0, 1) * 0.95)
    return P.finish(img, rng, blur=(0.0, 0.8), noise=(0.0, 0.02), jpeg_p=0.6, quality=(45, 95))
