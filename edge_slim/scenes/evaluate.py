"""Held-out evaluation through the runtime (any backend; no torch).

For each generated sample: one question per family (VQA accuracy), the true caption
among 8 candidates (matching recall@1), and one referring expression (share of
predicted boxes with IoU >= 0.5 against the true box). `type_errors` counts answers not of the
type the question's family asks for (a number to a colour question, ...), right or wrong.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import renderers as R
from .families import answer_type_ok
from .render import MODEL_RES, render
from ..vision.preprocess import load_image

DEFAULT_EVAL_SEED = 1  # training draws scenes from seed 0; any other seed is held out


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def model_image(renderer: str, scene: dict):
    """The 96x96 image the model sees of a placed scene: the renderer's image (160-512 px for all
    but 'flat') resized as the runtime's preprocessing does, so boxes stay in canvas pixels."""
    if renderer == "flat":
        return render(scene, MODEL_RES)
    img = R.draw(renderer, scene)
    return img if img.size == (MODEL_RES, MODEL_RES) else load_image(img).resize((MODEL_RES, MODEL_RES), resample=2)


def has_describe(session) -> bool:
    """Whether evaluation should score the session's caption decoder: its bundle has one, and the session is
    not on a board over RPC (a board serves one RPC session at a time; the decoder would need a second)."""
    bundle = getattr(session, "bundle", None)
    return bool(bundle is not None and bundle.manifest.get("describe") and getattr(session, "backend_name", "") != "rpc")


def scene_answers(session, seed: int, index: int, renderer: str = R.DEFAULT_RENDERER,
                  describe: bool = False) -> dict:
    """What `session` answers on scene `index` of stream `seed`, beside the truth: one question per family,
    the best of the captions, the located box (when the scene has a referring expression) and, with
    `describe`, the generated caption's score against the scene (scenes/caption.py)."""
    s = R.sample(renderer, seed, index)
    img = model_image(renderer, s["scene"])
    qs = s["questions"]
    row = {"i": index, "families": [q["family"] for q in qs], "truth": [q["answer"] for q in qs],
           "answers": [a.answer for a in session.ask(img, [q["text"] for q in qs])],
           "match": session.match(img, s["captions"]).best, "match_truth": s["caption_true"]}
    if s["refer"] is not None:
        row["box"] = session.locate(img, s["refer"]["text"]).box
        row["iou"] = box_iou(row["box"], s["refer"]["box"])
    if describe:
        from dataclasses import asdict

        from .caption import score_caption
        text = session.describe(img).text
        row["caption"] = {"text": text, **asdict(score_caption(text, s["scene"]))}
    return row


def summarize(rows: list[dict]) -> dict:
    """VQA accuracy (overall and per family), match R@1, locate IoU>=0.5 and type errors of scene_answers rows."""
    fam_ok: dict[str, list[int]] = {}
    type_errors = 0
    for r in rows:
        for f, a, t in zip(r["families"], r["answers"], r["truth"]):
            fam_ok.setdefault(f, []).append(int(a == t))
            type_errors += not answer_type_ok(f, a)
    allq = [v for vs in fam_ok.values() for v in vs]
    iou = [r["iou"] for r in rows if "iou" in r]
    return {"vqa_accuracy": round(float(np.mean(allq)), 4),
            "per_family": {k: round(float(np.mean(fam_ok[k])), 4) for k in sorted(fam_ok)},
            "match_r1": round(float(np.mean([r["match"] == r["match_truth"] for r in rows])), 4),
            "locate_iou50": round(float(np.mean(np.array(iou) >= 0.5)), 4),
            "type_errors": int(type_errors), **_describe_figures(rows)}


def _describe_figures(rows: list[dict]) -> dict:
    from .caption import CaptionScore, summarize as caption_summary
    scores = [CaptionScore(**{k: v for k, v in r["caption"].items() if k != "text"}) for r in rows if "caption" in r]
    return {"describe": caption_summary(scores)} if scores else {}


def evaluate(session, samples: int = 500, seed: int = DEFAULT_EVAL_SEED,
             progress: Callable[[int], None] | None = None, renderer: str = R.DEFAULT_RENDERER,
             describe: bool | None = None) -> dict:
    """Evaluate a Session on `samples` fresh scenes of stream `seed`, drawn by `renderer`
    (scenes/renderers.py; the same scenes' layouts and questions for any renderer of one layout).
    describe (default: when the bundle has the head) adds the generated captions' figures."""
    R.get(renderer)
    describe = has_describe(session) if describe is None else describe
    rows = []
    for i in range(samples):
        rows.append(scene_answers(session, seed, i, renderer, describe))
        if progress:
            progress(1)
    return {**summarize(rows), "samples": samples, "seed": seed, "renderer": renderer}
