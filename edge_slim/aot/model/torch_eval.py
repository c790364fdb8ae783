"""Quick held-out evaluation of a PyTorch SlimPajama during training (the shipped
numbers come from `edge-slim eval`, which runs the exported model through the runtime)."""
from __future__ import annotations

import numpy as np
import torch

from ...scenes import renderers as R
from ...scenes.grammar import ANSWERS
from ...vision.preprocess import to_model_input
from ...scenes.evaluate import box_iou, model_image
from .data import make_tokenizer


@torch.no_grad()
def evaluate_torch(model, samples: int = 300, seed: int = 1, renderer: str = R.DEFAULT_RENDERER) -> dict:
    tok = make_tokenizer(model.cfg.max_tokens)
    fam_ok: dict[str, list[int]] = {}
    r1, iou = [], []
    for i in range(samples):
        s = R.sample(renderer, seed, i)
        img = torch.from_numpy(to_model_input(model_image(renderer, s["scene"])))[None]
        texts = ([tok.encode(q["text"], "ask") for q in s["questions"]]
                 + [tok.encode(c, "match") for c in s["captions"]] + [tok.encode(s["refer"]["text"], "locate")])
        t = torch.from_numpy(np.stack(texts))
        out = model(img.expand(len(t), -1, -1, -1), t)
        nq = len(s["questions"])
        pred = out[0][:nq].argmax(-1)
        for q, p in zip(s["questions"], pred):
            fam_ok.setdefault(q["family"], []).append(int(ANSWERS[int(p)] == q["answer"]))
        m = out[1][nq:nq + len(s["captions"])]
        r1.append(int(int(m.argmax()) == s["caption_true"]))
        box = (out[2][-1] * 96).tolist()
        iou.append(box_iou(box, s["refer"]["box"]))
    allq = [v for vs in fam_ok.values() for v in vs]
    return {"vqa_accuracy": round(float(np.mean(allq)), 4),
            "per_family": {k: round(float(np.mean(v)), 4) for k, v in fam_ok.items()},
            "match_r1": round(float(np.mean(r1)), 4),
            "locate_iou50": round(float(np.mean(np.array(iou) >= 0.5)), 4)}
