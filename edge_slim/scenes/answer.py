"""Answer any grammar question about a scene by parsing its text.

This is a second, independent route to the right answer: the generator builds a
question from a chosen object, this module reads only the question's words and the
scene's objects. Tests check that both agree; users can call it on scenes they
write by hand (see docs/scenes.md).
"""
from __future__ import annotations

import re

from ..errors import BadInputError
from .grammar import COLORS, RELATIONS, SHAPE_PLURALS, SHAPES, SIZES

_SINGULAR = {v: k for k, v in SHAPE_PLURALS.items()}
_REL = "|".join(RELATIONS)


def parse_desc(words: str) -> dict:
    """'small red cube' / 'red objects' -> {'size': 'small', 'color': 'red', 'shape': 'cube'}."""
    *adjs, noun = words.split()
    noun = _SINGULAR.get(noun, noun)
    d: dict = {}
    if noun != "object":
        if noun not in SHAPES:
            raise BadInputError(f"unknown noun {noun!r}")
        d["shape"] = noun
    for a in adjs:
        key = "size" if a in SIZES else "color" if a in COLORS else None
        if key is None or key in d:
            raise BadInputError(f"cannot read description {words!r}")
        d[key] = a
    return d


def _objects(scene, d):
    return [o for o in scene["objects"] if all(o[k] == v for k, v in d.items())]


def _unique(scene, words):
    objs = _objects(scene, parse_desc(words))
    if len(objs) != 1:
        raise BadInputError(f"'{words}' names {len(objs)} objects; the question needs exactly one")
    return objs[0]


def _rel(a, b, rel, margin):
    def diff(key):
        return {"left of": b[key] - a[key], "right of": a[key] - b[key]} if key == "x" else \
               {"above": b[key] - a[key], "below": a[key] - b[key]}
    d = diff("x" if rel in ("left of", "right of") else "y")[rel]
    if abs(d) <= margin:
        raise BadInputError("the two objects are too close to say")
    if rel in ("above", "below") and "gy" in a and "gy" in b:  # 3-D renders: floor points must agree
        g = diff("gy")[rel]
        if abs(g) <= margin or (g > 0) != (d > 0):
            raise BadInputError("the two objects' centres and floor points disagree")
    return d > 0


def answer(scene: dict, question: str, margin: float | None = None) -> str:
    """The answer word for a question of the grammar about `scene` (margin: the scene's own
    `margin` if it has one, else 3 px)."""
    margin = float(scene.get("margin", 3.0)) if margin is None else margin
    q = question.strip().lower().rstrip("?").strip()
    if m := re.fullmatch(r"what (color|shape|size) is the ([a-z ]+)", q):
        return _unique(scene, m[2])[m[1]]
    if m := re.fullmatch(r"how many ([a-z ]+) are there", q):
        return str(len(_objects(scene, parse_desc(m[1]))))
    if m := re.fullmatch(r"is there an? ([a-z ]+)", q):
        return "yes" if _objects(scene, parse_desc(m[1])) else "no"
    if m := re.fullmatch(rf"is the ([a-z ]+?) ({_REL}) the ([a-z ]+)", q):
        return "yes" if _rel(_unique(scene, m[1]), _unique(scene, m[3]), m[2], margin) else "no"
    raise BadInputError(f"not a question of the scene grammar: {question!r}")
