"""Scene captions: the sentence `describe` generates, its parser, and the scorer for generated text.

A caption names every object of a scene with its size, colour and shape, in order from left to
right, and says where each object lies relative to the one named just before it ("it"):

    a large red cube, a small blue sphere right of it, a small green cone below it

The generator (`caption`) builds that sentence from a scene's objects; the parser
(`parse_caption`) reads only the words back into objects and relations, so generated text
can be checked against a scene by `score_caption` (object precision and recall with one-to-one
matching, exact-scene rate, relation precision). docs/scenes.md documents the grammar.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..errors import BadInputError
from .generate import relation_holds, scene_margin
from .grammar import COLORS, MAX_OBJECTS, RELATION_MARGIN, RELATIONS, SHAPES, SIZES

# The decoder's output vocabulary: id i is CAPTION_VOCAB[i]. A relation ("left of") is one token,
# so every token is one decision of the decoder.
SPECIAL = ("[pad]", "[bos]", "[eos]")
CAPTION_VOCAB: tuple[str, ...] = SPECIAL + (",", "a", "it") + SIZES + tuple(COLORS) + SHAPES + RELATIONS
PAD, BOS, EOS = 0, 1, 2
# bos + first object (a size colour shape) + each further object (, a size colour shape rel it) + eos
MAX_TOKENS = 2 + 4 + 7 * (MAX_OBJECTS - 1)
ATTRS = ("size", "color", "shape")

_IDS = {w: i for i, w in enumerate(CAPTION_VOCAB)}
_TOKEN = re.compile("|".join(sorted(RELATIONS, key=len, reverse=True)) + r"|,|[a-z]+")
_OBJECT = re.compile(rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
                     rf"(?: ({'|'.join(RELATIONS)}) it)?")


def _key(o: dict) -> tuple[str, str, str]:
    return (o["size"], o["color"], o["shape"])


def relation_between(a: dict, b: dict, margin: float = RELATION_MARGIN) -> str | None:
    """Of the relations `a rel b` that hold as in the spatial questions (generate.relation_holds),
    the one whose centres are farthest apart; None when none holds."""
    d = {"left of": b["x"] - a["x"], "right of": a["x"] - b["x"], "above": b["y"] - a["y"],
         "below": a["y"] - b["y"]}
    ok = [r for r in RELATIONS if relation_holds(a, b, r, margin) is True]
    return max(ok, key=lambda r: d[r]) if ok else None  # ties: the first in RELATIONS, so the choice is fixed


def ordered(objects: list[dict]) -> list[dict]:
    """Objects in caption order: left to right by centre (then top to bottom)."""
    return sorted(objects, key=lambda o: (o["x"], o["y"]))


def caption_words(scene: dict) -> list[str]:
    """The reference caption of a scene as decoder tokens (without bos/eos)."""
    words: list[str] = []
    prev, margin = None, scene_margin(scene)
    for o in ordered(scene["objects"]):
        if prev is not None:
            words.append(",")
        words += ["a", o["size"], o["color"], o["shape"]]
        rel = relation_between(o, prev, margin) if prev is not None else None
        if rel is not None:
            words += [rel, "it"]
        prev = o
    return words


def join_words(words: Iterable[str]) -> str:
    """Tokens -> text: words separated by spaces, commas attached to the word before."""
    out = ""
    for w in words:
        out += w if w == "," or not out else " " + w
    return out


def caption(scene: dict) -> str:
    """The reference caption of `scene` (see the module docstring)."""
    return join_words(caption_words(scene))


def encode_caption(text: str, max_len: int = MAX_TOKENS) -> np.ndarray:
    """Caption text -> int64 [max_len]: [bos] tokens [eos] [pad]...; refuses words outside the vocabulary."""
    words = _TOKEN.findall(text.lower())
    bad = [w for w in words if w not in _IDS]
    if bad:
        raise BadInputError(f"caption has words outside the caption vocabulary: {', '.join(bad)}")
    ids = [BOS] + [_IDS[w] for w in words] + [EOS]
    if len(ids) > max_len:
        raise BadInputError(f"caption has {len(ids)} tokens; the limit is {max_len}")
    return np.array(ids + [PAD] * (max_len - len(ids)), np.int64)


def decode_caption(ids: Iterable[int], vocab: tuple[str, ...] | list[str] = CAPTION_VOCAB) -> str:
    """Token ids (with or without bos) -> text, stopping at eos or pad."""
    words = []
    for i in ids:
        i = int(i)
        if i == BOS:
            continue
        if i in (EOS, PAD):
            break
        words.append(vocab[i])
    return join_words(words)


# ---- parser ---------------------------------------------------------------------------------

@dataclass
class ParsedCaption:
    objects: list[dict]                         # [{"size", "color", "shape"}] in caption order
    relations: list[tuple[int, str, int]]       # (i, rel, j): object i is rel object j (j = i - 1)
    bad: list[str] = field(default_factory=list)  # phrases that are not an object of the grammar


def parse_caption(text: str, strict: bool = True) -> ParsedCaption:
    """Read a caption back into objects and relations, from its words alone.

    strict: any phrase outside the grammar raises BadInputError. Otherwise such phrases are kept
    in `bad` (the scorer counts them as mentioned objects that match nothing) and a relation whose
    "it" has no object before it is dropped.
    """
    if not isinstance(text, str):
        raise BadInputError(f"caption must be a string, not {type(text).__name__}")
    objects: list[dict] = []
    relations: list[tuple[int, str, int]] = []
    bad: list[str] = []
    body = text.strip().lower().rstrip(".").strip()
    phrases = [" ".join(p.split()) for p in body.split(",")] if body else []
    for k, phrase in enumerate(phrases):
        m = _OBJECT.fullmatch(phrase)
        if m is None or (m[4] and not objects):
            why = "no object before 'it'" if m is not None else "not 'a SIZE COLOR SHAPE [RELATION it]'"
            if strict:
                raise BadInputError(f"caption phrase {k + 1} {phrase!r}: {why}")
            bad.append(phrase)
            continue
        objects.append({"size": m[1], "color": m[2], "shape": m[3]})
        if m[4]:
            relations.append((len(objects) - 1, m[4], len(objects) - 2))
    if strict and not objects:
        raise BadInputError("caption names no object")
    return ParsedCaption(objects, relations, bad)


# ---- scorer ---------------------------------------------------------------------------------

@dataclass
class CaptionScore:
    mentioned: int          # object phrases in the text (unparseable ones included)
    matched: int            # mentioned objects matched one-to-one to scene objects with the same attributes
    actual: int             # objects in the scene
    relations: int          # relations mentioned between two parsed objects
    relations_true: int     # ... that hold between some two distinct scene objects with those attributes
    exact: bool             # every object named once, nothing else, and every relation true


def _relation_true(scene: dict, a: dict, rel: str, b: dict) -> bool:
    ka, kb, objs, margin = _key(a), _key(b), scene["objects"], scene_margin(scene)
    return any(relation_holds(x, y, rel, margin) is True for i, x in enumerate(objs) if _key(x) == ka
               for j, y in enumerate(objs) if j != i and _key(y) == kb)


def score_caption(text: str, scene: dict) -> CaptionScore:
    """Score a generated caption against the scene it should describe."""
    p = parse_caption(text, strict=False)
    said, truth = Counter(_key(o) for o in p.objects), Counter(_key(o) for o in scene["objects"])
    matched = sum(min(n, truth[k]) for k, n in said.items())
    mentioned = len(p.objects) + len(p.bad)
    rel_true = sum(_relation_true(scene, p.objects[i], r, p.objects[j]) for i, r, j in p.relations)
    exact = not p.bad and said == truth and rel_true == len(p.relations)
    return CaptionScore(mentioned, matched, sum(truth.values()), len(p.relations), rel_true, exact)


def summarize(scores: list[CaptionScore]) -> dict:
    """Micro-averaged figures over many captions: object precision and recall, exact-scene rate,
    relation precision (None when no relation was mentioned at all)."""
    tot = lambda f: sum(getattr(s, f) for s in scores)
    ratio = lambda a, b: round(a / b, 4) if b else None
    return {"object_precision": ratio(tot("matched"), tot("mentioned")) if tot("mentioned") else 0.0,
            "object_recall": ratio(tot("matched"), tot("actual")),
            "exact_scene": ratio(sum(s.exact for s in scores), len(scores)),
            "relation_precision": ratio(tot("relations_true"), tot("relations")),
            "samples": len(scores)}


def evaluate_describe(session, samples: int = 200, seed: int | None = None, renderer: str = "flat",
                      progress: Callable[[int], None] | None = None) -> dict:
    """Caption figures of `session.describe` on fresh scenes of stream `seed` (default: the eval
    stream) drawn by `renderer` (scenes/renderers.py), as `evaluate()` draws them."""
    from . import renderers as R
    from .evaluate import DEFAULT_EVAL_SEED, model_image
    R.get(renderer)
    seed = DEFAULT_EVAL_SEED if seed is None else seed
    scores = []
    for i in range(samples):
        scene = R.place(renderer, seed, i)
        scores.append(score_caption(session.describe(model_image(renderer, scene)).text, scene))
        if progress:
            progress(1)
    return {**summarize(scores), "seed": seed, "renderer": renderer}
