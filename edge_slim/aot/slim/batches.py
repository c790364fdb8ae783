"""Fixed calibration batches drawn from the training pipeline (aot/model/train.py), as loss closures.

Pruning scores groups by the gradient or the rise of the training loss on a few batches; both need the
same batches every time the loss is computed (before and after a layer is skipped), so each batch is
drawn once here with its own seeded generator and replayed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..model import data as D
from ..model import train as T
from ..model.slimpajama import SlimPajama


def training_targets(cache: D.Cache) -> tuple[dict, dict, dict]:
    """The grounding targets train.train() computes once per cache (questions, true and false captions)."""
    return T.question_targets(cache), T.text_targets(cache.c_true, cache.cells), T.text_targets(cache.c_false, cache.cells)


def loss_batches(cache: D.Cache, n: int = 4, batch: int = 16, seed: int = 0,
                 targets: tuple[dict, dict, dict] | None = None) -> list[Callable[[SlimPajama], torch.Tensor]]:
    """n closures, each the ground-truth training loss (every term but the train-only auxiliary head) of
    one fixed batch of `batch` scenes for the model it is given."""
    qt, ct_t, cf_t = targets or training_targets(cache)
    draws = []
    for k in range(n):
        rng = np.random.default_rng([seed, 97, k])
        idx = rng.integers(len(cache), size=batch)
        draws.append(T.sample_batch(cache, idx, rng))

    def closure(b: T.Batch):
        def loss(model: SlimPajama) -> torch.Tensor:
            img, o = T.forward_batch(model, b)
            return sum(T.ground_truth_losses(model, None, cache, b, img, o, qt, ct_t, cf_t).values())
        return loss
    return [closure(b) for b in draws]
