"""The "raycast" renderer: the five shapes in 3-D, ray cast in pure NumPy (CLEVR-like, no dependency).

An orthographic camera looks down at a textured floor from a random elevation (38-70 degrees) and
azimuth; one sun light (random direction) casts shadows, softened by blurring them on the floor;
objects are matte (Lambert + a weak Phong highlight) or metallic (a reflected sky and floor tinted by
the object's colour, a sharp highlight). Rays are parallel, so every object is intersected only on
the pixels of its own projected box: cube (slabs), sphere, cylinder and cone (quadrics) analytically,
the torus by sphere tracing its distance function.

Why orthographic: an object's size in pixels then does not depend on its depth, so "small" and
"large" stay the pixel facts the grammar defines. `place` scales each object so that its projected
box's larger half-extent is the scene's r and puts it on the floor so that the box centre is the
scene's (x, y): sizes, centres and relations are the grammar's, computed from the 3-D geometry.
It also records gy, the canvas y of the point where the object stands, and a wider relation margin;
generate.relation_holds then never asks above/below where centre and floor point disagree.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from . import paint as P

MARGIN = 5.0  # canvas px: relations closer than this are not asked about 3-D renders
_UP = np.array([0.0, 0.0, 1.0])


def _rng(scene: dict, stream: int) -> np.random.Generator:
    return np.random.default_rng([*scene["render_seed"], 31, stream])


# ---- camera --------------------------------------------------------------------------------

def camera_basis(cam: dict):
    """(forward, right, up) unit vectors of an orthographic camera at elevation/azimuth (radians)."""
    th, ph = cam["elevation"], cam["azimuth"]
    fwd = -np.array([np.cos(th) * np.cos(ph), np.cos(th) * np.sin(ph), np.sin(th)])
    right = np.array([-np.sin(ph), np.cos(ph), 0.0])
    up = np.array([-np.sin(th) * np.cos(ph), -np.sin(th) * np.sin(ph), np.cos(th)])
    return fwd, right, up


def project(points: np.ndarray, cam: dict, wh) -> np.ndarray:
    """World points [...,3] (units = image pixels) -> image pixel coordinates [...,2] (x right, y down)."""
    _, right, up = camera_basis(cam)
    return np.stack([points @ right + wh[0] / 2, -(points @ up) + wh[1] / 2], -1)


# ---- shapes in their unit frame (z up, standing on z = 0) -----------------------------------

def _yaw(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def support_points(o: dict) -> np.ndarray:
    """Points whose projection bounds the unit-frame shape's projection (rims, corners, tube)."""
    shape, k = o["shape"], o["pose"]
    ang = np.linspace(0, 2 * np.pi, 97)[:-1]
    ring = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], -1)
    if shape == "cube":
        c = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (0, 2)], float)
        return c @ _yaw(k["yaw"]).T
    if shape == "cylinder":
        return np.concatenate([ring, ring + [0, 0, k["h"]]])
    if shape == "cone":
        return np.concatenate([ring, [[0, 0, k["h"]]]])
    if shape == "torus":
        a = k["tube"]
        psi = np.linspace(0, 2 * np.pi, 33)[:-1]
        tube = (1 + a * np.cos(psi))[None, :, None] * ring[:, None, :] + (a + a * np.sin(psi))[None, :, None] * _UP
        return tube.reshape(-1, 3)
    raise ValueError(shape)


def _sphere_box(o, cam, wh):
    c = project(np.array([0.0, 0, 1]), cam, wh) - project(np.zeros(3), cam, wh)
    return np.array([c[0] - 1, c[1] - 1, c[0] + 1, c[1] + 1])


def unit_box(o: dict, cam: dict, wh) -> np.ndarray:
    """[u0, v0, u1, v1] of the unit-frame shape, relative to the projection of its floor point."""
    if o["shape"] == "sphere":
        return _sphere_box(o, cam, wh)
    p = project(support_points(o), cam, wh) - project(np.zeros(3), cam, wh)
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])


def intersect(o: dict, org: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter t of the first hit (inf: none) of rays org [N,3] + t d (unit frame, one d)."""
    k, n = o["pose"], len(org)
    t = np.full(n, np.inf)
    x, y, z = org[:, 0], org[:, 1], org[:, 2]
    if o["shape"] == "sphere":
        oc = org - [0, 0, 1]
        a, b, c = d @ d, 2 * oc @ d, np.einsum("ij,ij->i", oc, oc) - 1
        return _first_root(a, b, c, t)
    if o["shape"] == "cube":
        lo, hi = np.array([-1, -1, 0.0]), np.array([1, 1, 2.0])
        dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (lo - org) / dd, (hi - org) / dd
        tn, tf = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
        ok = (tn <= tf) & (tf > 1e-6)
        t[ok] = np.where(tn[ok] > 1e-6, tn[ok], tf[ok])
        return t
    if o["shape"] in ("cylinder", "cone"):
        h = k["h"]
        if o["shape"] == "cylinder":
            a, b, c = d[0] ** 2 + d[1] ** 2, 2 * (x * d[0] + y * d[1]), x * x + y * y - 1
        else:  # x^2 + y^2 = (1 - z/h)^2
            q = 1 / h
            a = d[0] ** 2 + d[1] ** 2 - (q * d[2]) ** 2
            b = 2 * (x * d[0] + y * d[1]) + 2 * q * d[2] * (1 - q * z)
            c = x * x + y * y - (1 - q * z) ** 2
        disc = b * b - 4 * a * c
        ok = disc >= 0
        sq = np.sqrt(np.where(ok, disc, 0))
        for root in ((-b - sq) / (2 * a), (-b + sq) / (2 * a)):
            zz = z + root * d[2]
            hit = ok & (root > 1e-6) & (zz >= 0) & (zz <= h) & (root < t)
            t[hit] = root[hit]
        if o["shape"] == "cylinder" and abs(d[2]) > 1e-12:  # the top cap
            tc = (h - z) / d[2]
            px, py = x + tc * d[0], y + tc * d[1]
            hit = (tc > 1e-6) & (px * px + py * py <= 1) & (tc < t)
            t[hit] = tc[hit]
        return t
    if o["shape"] == "torus":
        a = k["tube"]
        oc = org - [0, 0, a]
        bb, cc = 2 * oc @ d / (d @ d), (np.einsum("ij,ij->i", oc, oc) - (1 + a) ** 2) / (d @ d)
        disc = bb * bb - 4 * cc
        live = np.nonzero(disc >= 0)[0]
        sq = np.sqrt(disc[live])
        s, s_end = np.maximum((-bb[live] - sq) / 2, 0), (-bb[live] + sq) / 2
        dn = np.linalg.norm(d)
        for _ in range(48):  # sphere tracing; the distance bound is in unit-frame lengths
            p = org[live] + s[:, None] * d
            dist = np.hypot(np.hypot(p[:, 0], p[:, 1]) - 1, p[:, 2] - a) - a
            s = s + dist / dn
        p = org[live] + s[:, None] * d
        dist = np.hypot(np.hypot(p[:, 0], p[:, 1]) - 1, p[:, 2] - a) - a
        hit = (np.abs(dist) < 2e-3) & (s <= s_end + 1e-3)
        t[live[hit]] = s[hit]
        return t
    raise ValueError(o["shape"])


def _first_root(a, b, c, t):
    disc = b * b - 4 * a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0))
    r0, r1 = (-b - sq) / (2 * a), (-b + sq) / (2 * a)
    r = np.where(r0 > 1e-6, r0, r1)
    hit = ok & (r > 1e-6)
    t[hit] = r[hit]
    return t


def normal(o: dict, p: np.ndarray) -> np.ndarray:
    """Outward unit normals at unit-frame surface points p [N,3]."""
    k = o["pose"]
    if o["shape"] == "sphere":
        n = p - [0, 0, 1]
    elif o["shape"] == "cube":
        q = np.abs(p - [0, 0, 1])
        n = np.where(q == q.max(1, keepdims=True), np.sign(p - [0, 0, 1]), 0.0)
    elif o["shape"] == "cylinder":
        top = p[:, 2] >= k["h"] - 1e-4
        n = np.where(top[:, None], [0, 0, 1.0], p * [1, 1, 0])
    elif o["shape"] == "cone":
        rho = np.maximum(np.hypot(p[:, 0], p[:, 1]), 1e-6)
        n = np.stack([p[:, 0] / rho, p[:, 1] / rho, np.full(len(p), 1 / k["h"])], -1)
    else:
        a = k["tube"]
        rho = np.maximum(np.hypot(p[:, 0], p[:, 1]), 1e-6)
        q = rho - 1
        n = np.stack([q * p[:, 0] / rho, q * p[:, 1] / rho, p[:, 2] - a], -1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)


# ---- placing a scene -----------------------------------------------------------------------

def place(scene: dict) -> dict:
    """The scene with camera, canvas size, each object's 3-D pose, and boxes/gy from the projection."""
    rng = _rng(scene, 0)
    cam = {"elevation": float(rng.uniform(np.radians(38), np.radians(70))),
           "azimuth": float(rng.uniform(0, 2 * np.pi))}
    wh = P.canvas_size(rng, 160, 512)
    sx, sy, s = P.scales(wh)
    _, right, up = camera_basis(cam)
    floor = np.array([[right[0], right[1]], [-up[0], -up[1]]])  # floor (X, Y) -> image offset (u, v)
    out = {**scene, "objects": [dict(o) for o in scene["objects"]], "canvas": wh, "camera": cam,
           "margin": MARGIN}
    for o in out["objects"]:
        o["pose"] = {"yaw": float(rng.uniform(0, np.pi / 2)), "h": float(rng.uniform(1.5, 2.2)),
                     "tube": float(rng.uniform(0.3, 0.4))}
        ub = unit_box(o, cam, wh)
        g = o["r"] * s / (max(ub[2] - ub[0], ub[3] - ub[1]) / 2)  # image px per unit-frame length
        centre = np.array([(ub[0] + ub[2]) / 2, (ub[1] + ub[3]) / 2]) * g
        want = np.array([o["x"] * sx, o["y"] * sy]) - centre - [wh[0] / 2, wh[1] / 2]
        X, Y = np.linalg.solve(floor, want)
        o["pose"].update(g=float(g), X=float(X), Y=float(Y))
        o["gy"] = round(float((want[1] + wh[1] / 2) / sy), 2)
        b = ub * g + np.concatenate([want, want]) + [wh[0] / 2, wh[1] / 2] * 2
        o["box"] = [round(float(np.clip(v / k, 0, 96)), 2) for v, k in zip(b, (sx, sy, sx, sy))]
    return out


# ---- drawing -------------------------------------------------------------------------------

def _to_unit(o: dict, pts: np.ndarray, d: np.ndarray):
    k = o["pose"]
    rot = _yaw(-k["yaw"]) if o["shape"] == "cube" else np.eye(3)
    return (pts - [k["X"], k["Y"], 0]) @ rot.T / k["g"], rot @ d / k["g"], rot


def _floor_color(rng, wh, hit: np.ndarray) -> np.ndarray:
    dark = rng.random() < 0.2
    a = P.hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.15), rng.uniform(0.15, 0.3) if dark else rng.uniform(0.55, 0.85))
    X, Y = hit[..., 0], hit[..., 1]
    kind = int(rng.integers(4))
    f = rng.uniform(0.02, 0.08)
    if kind == 1:  # tiles
        t = ((np.floor(X * f) + np.floor(Y * f)) % 2) * rng.uniform(0.05, 0.15)
    elif kind == 2:  # planks
        t = 0.06 * np.sin(X * f * 6 + 2 * np.sin(Y * f)) * (rng.random() < 0.5)
    elif kind == 3:  # grain
        t = rng.normal(0, 0.03, X.shape)
    else:
        t = np.zeros_like(X)
    return np.clip(a * (1 - t[..., None]), 0, 1)


def draw(scene: dict) -> Image.Image:
    """Ray cast a scene placed by `place`."""
    rng = _rng(scene, 1)
    wh, cam = scene["canvas"], scene["camera"]
    W, H = wh
    fwd, right, up = camera_basis(cam)
    py, px = np.mgrid[0:H, 0:W].astype(np.float64)
    org = ((px + 0.5 - W / 2)[..., None] * right - (py + 0.5 - H / 2)[..., None] * up - 4 * max(W, H) * fwd)
    org = org.reshape(-1, 3)
    t_best = -org[:, 2] / fwd[2]  # every ray meets the floor z = 0
    ids = np.full(len(org), -1)
    nrm = np.tile([0.0, 0.0, 1.0], (len(org), 1))
    for i, o in enumerate(scene["objects"]):
        x0, y0, x1, y1 = (int(np.floor(v * k)) for v, k in zip(o["box"], (W / 96, H / 96, W / 96, H / 96)))
        yy, xx = np.mgrid[max(0, y0 - 1):min(H, y1 + 2), max(0, x0 - 1):min(W, x1 + 2)]
        sel = (yy * W + xx).ravel()
        uo, ud, rot = _to_unit(o, org[sel], fwd)
        t = intersect(o, uo, ud)
        win = t < t_best[sel]
        sel, t = sel[win], t[win]
        t_best[sel], ids[sel] = t, i
        nrm[sel] = normal(o, uo[win] + t[:, None] * ud) @ rot  # back to the world frame
    pts = org + t_best[:, None] * fwd
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(30), np.radians(65))
    L = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    lit = np.ones(len(org))
    start = pts + nrm * 0.3
    # shadow rays towards the sun, exact only where a ray passes an object's bounding sphere:
    # |c - p|^2 - ((c - p).L)^2 < rad^2, for all objects at once with one matrix product
    cs = np.array([[o["pose"]["X"], o["pose"]["Y"], o["pose"]["g"] * (1.1 if o["shape"] != "torus" else 0.5)]
                   for o in scene["objects"]])
    rads = np.array([o["pose"]["g"] * 2.0 for o in scene["objects"]])
    sl, s2 = start @ L, np.einsum("ij,ij->i", start, start)
    along = cs @ L - sl[:, None]                                       # [N,K]
    dist2 = (cs * cs).sum(1) - 2 * (start @ cs.T) + s2[:, None] - along ** 2
    cand = (dist2 < rads * rads) & (along > -rads)
    for i, o in enumerate(scene["objects"]):
        near = np.nonzero(cand[:, i])[0]
        if len(near):
            uo, ud, _ = _to_unit(o, start[near], L)
            lit[near[np.isfinite(intersect(o, uo, ud))]] = 0.0
    floor = ids < 0
    soft = rng.uniform(0.5, 3.0) * max(W, H) / 160
    sh = Image.fromarray(((1 - lit) * floor).reshape(H, W).astype(np.float32) * 255).convert("L")
    sh = np.asarray(sh.filter(ImageFilter.GaussianBlur(soft)), np.float32).ravel() / 255
    lit = np.where(floor, 1 - sh, lit)
    amb = rng.uniform(0.3, 0.5)
    ndl = np.clip(nrm @ L, 0, 1) * lit
    img = np.zeros((len(org), 3))
    fl = _floor_color(rng, wh, pts)
    img[floor] = fl[floor] * (amb + (1 - amb) * ndl[floor, None])
    sky = P.hsv_to_rgb(rng.uniform(180, 240), rng.uniform(0, 0.3), rng.uniform(0.75, 1.0))
    floor_env = fl[floor].mean(0) if floor.any() else np.full(3, 0.5)
    view = -fwd
    hv = (L + view) / np.linalg.norm(L + view)
    for i, o in enumerate(scene["objects"]):
        m = ids == i
        if not m.any():
            continue
        base, n = P.sample_color(rng, o["color"]), nrm[m]
        flat = 0.45 if o["shape"] == "cube" else 1.0  # a flat face lights up whole: keep its colour
        spec = np.clip(n @ hv, 0, 1)
        if rng.random() < 0.4:  # metal: the reflected sky/floor tinted by the colour, a sharp highlight
            refl = fwd - 2 * (n @ fwd)[:, None] * n
            env = np.where((refl[:, 2] > 0)[:, None], sky, floor_env) * (0.55 + 0.45 * np.abs(refl[:, 2:3]))
            col = base * (0.15 + 0.45 * ndl[m, None] + 0.55 * env) + lit[m, None] * rng.uniform(0.35, 0.7) * flat * spec[:, None] ** rng.uniform(40, 120)
        else:
            col = base * (amb + (1 - amb) * ndl[m, None]) + lit[m, None] * rng.uniform(0.05, 0.3) * spec[:, None] ** 12
        img[m] = col
    img = img.reshape(H, W, 3) * rng.uniform(0.9, 1.15)
    return P.finish(img.astype(np.float32), rng, blur=(0.0, 0.9), noise=(0.0, 0.025))


def id_buffer(scene: dict) -> np.ndarray:
    """Which object (index, -1: floor) each pixel of the render shows: what tests check boxes against."""
    W, H = scene["canvas"]
    fwd, right, up = camera_basis(scene["camera"])
    py, px = np.mgrid[0:H, 0:W].astype(np.float64)
    org = ((px + 0.5 - W / 2)[..., None] * right - (py + 0.5 - H / 2)[..., None] * up - 4 * max(W, H) * fwd)
    org = org.reshape(-1, 3)
    t_best = -org[:, 2] / fwd[2]
    ids = np.full(len(org), -1)
    for i, o in enumerate(scene["objects"]):  # every pixel, not just the box: the test must not assume it
        uo, ud, _ = _to_unit(o, org, fwd)
        t = intersect(o, uo, ud)
        win = t < t_best
        t_best[win], ids[win] = t[win], i
    return ids.reshape(H, W)
