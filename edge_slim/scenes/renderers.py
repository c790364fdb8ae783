"""Renderers by name: which layout each uses, whether training may use it, and where its code is.

A renderer turns a scene into pixels in two steps: `place` fixes everything geometric (image size,
camera, per-object pose) and writes each object's box in canvas pixels from what it will draw;
`draw` makes the image. Answers are computed from the placed scene, so they follow the grammar
whatever the look. The modules are imported on lookup, so naming one costs nothing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import BadInputError
from . import generate as G


@dataclass(frozen=True)
class Renderer:
    name: str
    module: str          # edge_slim.scenes.<module> with place(scene) and draw(scene); "" = render.render
    layout: str          # generate.LAYOUTS
    min_dist: float      # centres at least this x (sum of half-extents) apart
    train: bool          # may a training mix use it? (False: kept for measuring generalization)
    summary: str


def _registry(*entries: Renderer) -> dict[str, Renderer]:
    out: dict[str, Renderer] = {}
    for r in entries:
        if r.name in out:
            raise ValueError(f"renderer {r.name!r} registered twice")
        out[r.name] = r
    return out


RENDERERS = _registry(
    Renderer("flat", "", "grid", 0.75, True, "the original 2-D drawing on the 6x6 grid, 96x96 (render.render)"),
    Renderer("varied2d", "looks", "free", 0.75, True,
             "2-D, varied colours, shading, materials, shadows, backgrounds, sizes, blur, noise, JPEG"),
    Renderer("raycast", "raycast", "free", 1.0, True, "3-D NumPy ray caster, orthographic camera, floor, shadows"),
    Renderer("unseen", "toon", "free", 0.75, False, "hand-drawn cartoon look (evaluation only)"),
)
DEFAULT_RENDERER = "flat"


def get(name: str) -> Renderer:
    if name not in RENDERERS:
        raise BadInputError(f"unknown renderer {name!r}; choose from {', '.join(RENDERERS)}")
    return RENDERERS[name]


def parse_names(text: str) -> list[str]:
    """'flat,unseen' -> ['flat', 'unseen'] (each checked; no repeats)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadInputError("no renderer named")
    for n in names:
        get(n)
    if len(set(names)) != len(names):
        raise BadInputError(f"renderer named twice in {text!r}")
    return names


def parse_mix(mix) -> dict[str, float]:
    """A training mix, {'flat': 0.2, 'varied2d': 0.4, 'raycast': 0.4} or 'flat:0.2,varied2d:0.4,...'
    (a bare name weighs 1), normalized to sum 1. Evaluation-only renderers are refused."""
    if isinstance(mix, str):
        items = {}
        for part in (p.strip() for p in mix.split(",") if p.strip()):
            name, _, w = part.partition(":")
            try:
                items[name.strip()] = float(w) if w else 1.0
            except ValueError:
                raise BadInputError(f"renderer weight {w!r} is not a number") from None
        mix = items
    if not mix:
        raise BadInputError("the renderer mix is empty")
    for name, w in mix.items():
        if not get(name).train:
            raise BadInputError(f"renderer {name!r} is for evaluation only; a training mix cannot use it")
        if not w >= 0:
            raise BadInputError(f"renderer weight for {name!r} must be >= 0")
    total = sum(mix.values())
    if total <= 0:
        raise BadInputError("renderer weights sum to 0")
    return {k: v / total for k, v in mix.items()}


def _module(r: Renderer):
    return importlib.import_module(f"{__package__}.{r.module}")


def place(name: str, seed: int, index: int) -> dict:
    """Scene `index` of stream `seed` laid out and placed for renderer `name` (deterministic)."""
    r = get(name)
    scene = G.sample_scene(seed, index, layout=r.layout, min_dist=r.min_dist)
    return _module(r).place(scene) if r.module else scene


def draw(name: str, scene: dict, size: int | None = None):
    """The image of a placed scene (a PIL RGB image; its size is the renderer's choice except for
    'flat', which draws size x size, 96 by default)."""
    r = get(name)
    if not r.module:
        from .render import MODEL_RES, render
        return render(scene, size or MODEL_RES)
    return _module(r).draw(scene)


def sample(name: str, seed: int, index: int) -> dict:
    """generate.sample for renderer `name`: questions, captions and the locate box of its placed scene."""
    return G.sample(seed, index, scene=place(name, seed, index))
