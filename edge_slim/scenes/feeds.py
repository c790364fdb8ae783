"""Model inputs made from generated scenes, for code that needs realistic inputs without a dataset:
quantization's calibration (aot/quantize/calibration.py) and `edge-slim bench` (runtime/bench.py).

Feeds are model inputs ({"image": [1,3,H,W] float32, "tokens": [1,L] int64}) made with a Session's own
preprocessing and tokenizer, so they are exactly what inference sees.
"""
from __future__ import annotations

from . import generate as G
from .render import MODEL_RES, render


def scene_feeds(session, samples: int, seed: int) -> list[dict]:
    """Per scene of stream `seed`: one question, one caption and (when the scene has one) one phrase."""
    feeds = []
    for i in range(samples):
        s = G.sample(seed, i)
        image = session.prepare_image(render(s["scene"], MODEL_RES))[0]
        texts = [("ask", s["questions"][i % len(s["questions"])]["text"]), ("match", s["captions"][i % len(s["captions"])])]
        if s["refer"] is not None:
            texts.append(("locate", s["refer"]["text"]))
        feeds += [{"image": image, "tokens": session.tokenizer.encode(t, task)[None]} for task, t in texts]
    return feeds
