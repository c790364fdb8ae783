"""Seeded scene sampling and the questions, referring expressions and captions about them.

A scene is a plain dict (JSON-serialisable). Every answer is computed from the
scene's objects by the functions here, so a hand-written scene gets its answers
the same way (see docs/scenes.md).

Layout: the 96x96 canvas is a 6x6 grid of 16-pixel cells; each object's centre
lies in its own cell, jittered by up to 5 pixels ("grid", the default), or anywhere
on the canvas ("free", used by the varied renderers) as long as no two centres share
a cell (training's per-cell targets stay defined). Centres keep a minimum distance,
so objects may partially occlude each other but never hide.
"""
from __future__ import annotations

import numpy as np

from .grammar import (COLORS, FAMILIES, MAX_OBJECTS, MIN_OBJECTS, RELATION_MARGIN, RELATIONS,
                      SHAPE_PLURALS, SHAPES, SIZE_RADIUS, SIZES, TEMPLATES)

GRID, CELL = 6, 16
ATTRS = ("size", "color", "shape")
_VALUES = {"size": SIZES, "color": tuple(COLORS), "shape": SHAPES}


def _rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(stream)])


LAYOUTS = ("grid", "free")


def cell_index(x: float, y: float) -> int:
    """The 16-px cell (0..35, row-major) that holds the point (x, y) of the 96x96 canvas."""
    return int(y // CELL) * GRID + int(x // CELL)


def _positions(rng, layout: str):
    """Yield (size, r, x, y) candidates; the caller keeps those far enough from the others."""
    if layout == "grid":
        for cell in rng.permutation(GRID * GRID):
            size = SIZES[rng.integers(2)]
            r = SIZE_RADIUS[size] + rng.uniform(-0.5, 0.5)
            cy, cx = divmod(int(cell), GRID)
            x = float(np.clip(CELL * cx + CELL / 2 + rng.uniform(-5, 5), r + 1, 95 - r))
            y = float(np.clip(CELL * cy + CELL / 2 + rng.uniform(-5, 5), r + 1, 95 - r))
            yield size, r, x, y
    elif layout == "free":
        for _ in range(400):
            size = SIZES[rng.integers(2)]
            r = SIZE_RADIUS[size] + rng.uniform(-0.5, 0.5)
            yield size, r, round(float(rng.uniform(r + 1, 95 - r)), 2), round(float(rng.uniform(r + 1, 95 - r)), 2)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def sample_scene(seed: int, index: int, layout: str = "grid", min_dist: float = 0.75) -> dict:
    """Scene number `index` of the stream `seed`; the same arguments always give the same scene.

    min_dist: two centres are at least min_dist x (sum of half-extents) apart. "free" layouts
    also keep every centre in its own 16-px cell, as the grid does by construction."""
    rng = _rng(seed, index)
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    objects: list[dict] = []
    candidates = _positions(rng, layout)
    while len(objects) < n and (c := next(candidates, None)) is not None:
        size, r, x, y = c  # drawn only while objects are missing: the rng stream stays today's
        if any(np.hypot(x - o["x"], y - o["y"]) < min_dist * (r + o["r"]) for o in objects):
            continue
        if layout != "grid" and any(cell_index(x, y) == cell_index(o["x"], o["y"]) for o in objects):
            continue
        shape = SHAPES[rng.integers(len(SHAPES))]
        objects.append({"shape": shape, "color": tuple(COLORS)[rng.integers(len(COLORS))],
                        "size": size, "x": round(x, 2), "y": round(y, 2), "r": round(r, 2),
                        "light": round(float(rng.uniform(0.8, 1.12)), 3)})
    if not any(len(select_in(objects, {k: o[k] for k in ATTRS})) == 1 for o in objects):
        # every object has a twin: recolour one so that at least one object can be referred to
        used = {o["color"] for o in objects}
        objects[-1]["color"] = _pick(rng, [c for c in COLORS if c not in used])
    for o in objects:
        hw = 0.8 * o["r"] if o["shape"] == "cylinder" else o["r"]
        o["box"] = [round(o["x"] - hw, 2), round(o["y"] - o["r"], 2),
                    round(o["x"] + hw, 2), round(o["y"] + o["r"], 2)]
    scene = {"seed": int(seed), "index": int(index), "render_seed": [int(seed), int(index), 1],
             "objects": objects}
    if layout != "grid":
        scene["layout"] = layout
    return scene


# ---- descriptions -------------------------------------------------------------------------

def matches(obj: dict, desc: dict) -> bool:
    return all(obj[k] == v for k, v in desc.items())


def select_in(objects: list[dict], desc: dict) -> list[int]:
    return [i for i, o in enumerate(objects) if matches(o, desc)]


def select(scene: dict, desc: dict) -> list[int]:
    """Indices of the scene's objects that fit the description."""
    return select_in(scene["objects"], desc)


def describe(desc: dict, plural: bool = False) -> str:
    """{'size': 'small', 'color': 'red'} -> 'small red object' (plural: 'small red objects')."""
    noun = desc.get("shape", "object")
    words = [desc[k] for k in ("size", "color") if k in desc]
    return " ".join(words + [SHAPE_PLURALS[noun] if plural else noun])


def unique_descs(scene: dict, i: int, without: str | None = None) -> list[dict]:
    """All descriptions of object i (attribute subsets) that pick out only object i."""
    o = scene["objects"][i]
    keys = [k for k in ATTRS if k != without]
    out = []
    for mask in range(1 << len(keys)):
        d = {k: o[k] for j, k in enumerate(keys) if mask >> j & 1}
        if select(scene, d) == [i]:
            out.append(d)
    return out


def relation_holds(a: dict, b: dict, rel: str, margin: float = RELATION_MARGIN) -> bool | None:
    """True/False for 'a rel b', None when the centres are too close to say.

    Objects of a 3-D render also carry `gy`, the y of the point where they stand on the floor:
    a person may judge above/below by that point rather than by the centre, so a vertical
    relation holds only when both agree, each by more than the margin."""
    sign = {"left of": ("x", 1), "right of": ("x", -1), "above": ("y", 1), "below": ("y", -1)}[rel]
    d = sign[1] * (b[sign[0]] - a[sign[0]])
    if abs(d) <= margin:
        return None
    if sign[0] == "y" and "gy" in a and "gy" in b:
        g = sign[1] * (b["gy"] - a["gy"])
        if abs(g) <= margin or (g > 0) != (d > 0):
            return None
    return d > 0


def scene_margin(scene: dict) -> float:
    """The relation margin of a scene: the grammar's, or the wider one a renderer asked for."""
    return float(scene.get("margin", RELATION_MARGIN))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _random_desc(rng, n_attrs: int) -> dict:
    keys = list(rng.permutation(ATTRS)[:n_attrs])
    return {k: _pick(rng, _VALUES[k]) for k in keys}


# ---- questions -----------------------------------------------------------------------------

def question(scene: dict, family: str, rng: np.random.Generator) -> dict | None:
    """One question of `family` with its answer, or None when the scene allows none."""
    objs = scene["objects"]
    if family in ("color", "shape", "size"):
        order = rng.permutation(len(objs))
        for i in order:
            ds = unique_descs(scene, int(i), without=family)
            if ds:
                d = _pick(rng, ds)
                return {"family": family, "text": TEMPLATES[family].format(d=describe(d)),
                        "answer": objs[i][family], "target": int(i)}
        return None
    if family == "count":
        if rng.random() < 0.8:
            o = _pick(rng, objs)
            keys = list(rng.permutation(ATTRS)[:int(rng.integers(1, 3))])
            d = {k: o[k] for k in keys}
        else:
            d = _random_desc(rng, int(rng.integers(1, 3)))
        return {"family": family, "text": TEMPLATES[family].format(dp=describe(d, plural=True)),
                "answer": str(len(select(scene, d)))}
    if family == "exists":
        want = rng.random() < 0.5
        for _ in range(50):
            if want:
                o = _pick(rng, objs)
                keys = list(rng.permutation(ATTRS)[:int(rng.integers(1, 4))])
                d = {k: o[k] for k in keys}
            else:
                d = _random_desc(rng, int(rng.integers(1, 4)))
            if bool(select(scene, d)) == want:
                return {"family": family, "text": TEMPLATES[family].format(d=describe(d)),
                        "answer": "yes" if want else "no"}
        return None
    if family == "spatial":
        pairs = [(int(i), int(j)) for i in rng.permutation(len(objs)) for j in rng.permutation(len(objs))
                 if i != j]
        for i, j in pairs:
            rel = _pick(rng, RELATIONS)
            truth = relation_holds(objs[i], objs[j], rel, scene_margin(scene))
            di, dj = unique_descs(scene, i), unique_descs(scene, j)
            if truth is None or not di or not dj:
                continue
            text = TEMPLATES[family].format(d1=describe(_pick(rng, di)), rel=rel,
                                            d2=describe(_pick(rng, dj)))
            return {"family": family, "text": text, "answer": "yes" if truth else "no"}
        return None
    raise ValueError(f"unknown question family {family!r}")


def questions(scene: dict, stream: int = 2) -> list[dict]:
    """One question per family (where the scene allows it), deterministic per scene."""
    rng = _rng(scene["seed"], scene["index"], stream)
    return [q for f in FAMILIES if (q := question(scene, f, rng)) is not None]


# ---- referring expressions -----------------------------------------------------------------

def referring(scene: dict, rng: np.random.Generator) -> dict | None:
    """'the small red cube' -> the box of the one object it names (pixels of a 96x96 canvas)."""
    for i in rng.permutation(len(scene["objects"])):
        ds = unique_descs(scene, int(i))
        ds = [d for d in ds if d] or ds
        if ds:
            d = _pick(rng, ds)
            return {"text": "the " + describe(d), "target": int(i), "box": scene["objects"][i]["box"]}
    return None


# ---- captions for matching -----------------------------------------------------------------

def caption_text(c: dict) -> str:
    if c["kind"] == "one":
        return "a " + describe(c["d1"])
    if c["kind"] == "and":
        return f"a {describe(c['d1'])} and a {describe(c['d2'])}"
    return f"a {describe(c['d1'])} {c['rel']} a {describe(c['d2'])}"


def caption_truth(scene: dict, c: dict) -> bool | None:
    """Is the caption true of the scene? None when it hinges on a too-close relation."""
    objs = scene["objects"]
    a = select(scene, c["d1"])
    if c["kind"] == "one":
        return bool(a)
    b = select(scene, c["d2"])
    if c["kind"] == "and":
        return any(i != j for i in a for j in b)
    verdicts = {relation_holds(objs[i], objs[j], c["rel"], scene_margin(scene)) for i in a for j in b if i != j}
    if True in verdicts:
        return True
    return None if None in verdicts else False


def _caption_desc(rng, o: dict) -> dict:
    keys = ["shape"] + (["color"] if rng.random() < 0.9 else []) + (["size"] if rng.random() < 0.4 else [])
    return {k: o[k] for k in keys}


def true_caption(scene: dict, rng: np.random.Generator) -> dict:
    objs = scene["objects"]
    for _ in range(50):
        kind = _pick(rng, ("one", "and", "rel"))
        i, j = (int(v) for v in rng.permutation(len(objs))[:2])
        c = {"kind": kind, "d1": _caption_desc(rng, objs[i])}
        if kind != "one":
            c["d2"] = _caption_desc(rng, objs[j])
        if kind == "rel":
            c["rel"] = _pick(rng, RELATIONS)
            if relation_holds(objs[i], objs[j], c["rel"], scene_margin(scene)) is not True:
                continue
        if caption_truth(scene, c) is True:
            return {**c, "text": caption_text(c)}
    c = {"kind": "one", "d1": {"shape": objs[0]["shape"], "color": objs[0]["color"]}}
    return {**c, "text": caption_text(c)}


def false_caption(scene: dict, rng: np.random.Generator, base: dict | None = None) -> dict | None:
    """A caption false of the scene: a true one with one attribute or the relation changed."""
    for _ in range(100):
        c = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (base or true_caption(scene, rng)).items()}
        c.pop("text", None)
        slots = ["d1"] + (["d2"] if "d2" in c else [])
        if c["kind"] == "rel" and rng.random() < 0.3:
            c["rel"] = {"left of": "right of", "right of": "left of", "above": "below",
                        "below": "above"}[c["rel"]]
        else:
            d = c[_pick(rng, slots)]
            k = _pick(rng, list(d))
            d[k] = _pick(rng, [v for v in _VALUES[k] if v != d[k]])
        if caption_truth(scene, c) is False:
            return {**c, "text": caption_text(c)}
    return None


def match_candidates(scene: dict, rng: np.random.Generator, n: int = 8) -> tuple[list[str], int]:
    """n captions of which exactly one is true; returns (texts, index of the true one)."""
    t = true_caption(scene, rng)
    texts = [t["text"]]
    for _ in range(20 * n):
        if len(texts) == n:
            break
        f = false_caption(scene, rng, base=t if rng.random() < 0.5 else None)
        if f is not None and f["text"] not in texts:
            texts.append(f["text"])
    order = [int(k) for k in rng.permutation(len(texts))]
    return [texts[k] for k in order], order.index(0)


def sample(seed: int, index: int, scene: dict | None = None) -> dict:
    """A full evaluation sample: scene, one question per family, one referring expression,
    and matching candidates. `scene` (default: sample_scene(seed, index)) may be a scene a
    renderer has placed (scenes/renderers.py), whose boxes and margins the answers then use."""
    scene = sample_scene(seed, index) if scene is None else scene
    rng = _rng(seed, index, 3)
    cands, true_idx = match_candidates(scene, rng)
    return {"scene": scene, "questions": questions(scene), "refer": referring(scene, rng),
            "captions": cands, "caption_true": true_idx}
