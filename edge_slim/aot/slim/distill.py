"""Knowledge distillation from a teacher SlimPajama into a (pruned or smaller) student, plus the truth.

Both models see the same batch of the training pipeline (aot/model/train.py: B images, five texts each).
The student learns the scenes' ground truth (train.ground_truth_losses, without the train-only auxiliary
head: a bundle has none, and a fresh one would pull the image tower around while it learns) and the
teacher's outputs, softened by a temperature T where they are distributions:

    kd_answer   KL(teacher || student) of the answer distributions at T (x T^2), question rows
    kd_match    Bernoulli KL of the match probability at T (x T^2), caption rows
    kd_pointer  KL of both pointers' distributions over the image tokens at T (x T^2)
    kd_select   Bernoulli KL of both selections per image token, KL of the relation classifier
    kd_box      L1 between the per-token boxes (x 10, as the ground-truth box loss)
    kd_embed    KL of each image's distribution over the batch's true captions (cosine similarity x 10),
                plus 1 - cosine between the embeddings themselves when both have the same embed_dim
    kd_caption  KL of the caption decoder's next-token distributions at T (x T^2), non-padding positions,
                when both models have a decoder and the cache has captions

Fine-tuning keeps the stem's BatchNorms on their running statistics (a few hundred small batches
would otherwise replace statistics the teacher was trained with by noisy batch estimates).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...scenes import caption as CAP
from ..model import data as D
from ..model import train as T
from ..model.slimpajama import SlimPajama
from .batches import training_targets

EMBED_SCALE = 10.0   # the similarity scale of kd_embed: SlimPajama's initial logit_scale (a bundle keeps none)


@dataclass
class DistillArgs:
    steps: int = 300
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 20
    weight_decay: float = 0.01
    temperature: float = 2.0
    kd_weight: float = 1.0       # the distillation terms' share ...
    gt_weight: float = 1.0       # ... and the ground truth's
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _kl(t_logits: torch.Tensor, s_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(t/T) || softmax(s/T)) x T^2 (last axis is the distribution)."""
    t = F.log_softmax(t_logits / temp, -1)
    s = F.log_softmax(s_logits / temp, -1)
    return (t.exp() * (t - s)).sum(-1).mean() * temp * temp


def _bernoulli_kl(t_logits: torch.Tensor, s_logits: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """Mean elementwise KL between Bernoulli(sigmoid(t/T)) and Bernoulli(sigmoid(s/T)), x T^2."""
    t, s = t_logits / temp, s_logits / temp
    p = torch.sigmoid(t)
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temp * temp


def distill_losses(student: SlimPajama, teacher: SlimPajama, b: T.Batch, s_img: torch.Tensor, s_out: dict,
                   t_img: torch.Tensor, t_out: dict, temp: float, cap_tok: np.ndarray | None = None) -> dict:
    """The kd_* terms of the module docstring for one batch (teacher outputs computed without gradients)."""
    B = len(b.idx)
    q, ref, caps = slice(0, 2 * B), slice(2 * B, 3 * B), slice(3 * B, 5 * B)
    L = {"kd_answer": _kl(t_out["answer_logits"][q], s_out["answer_logits"][q], temp),
         "kd_match": _bernoulli_kl(t_out["match_logit"][caps], s_out["match_logit"][caps], temp),
         "kd_pointer": 0.5 * (_kl(t_out["loc_logits"][: 3 * B], s_out["loc_logits"][: 3 * B], temp)
                              + _kl(t_out["loc2_logits"][q], s_out["loc2_logits"][q], temp)),
         "kd_select": (_bernoulli_kl(t_out["sel_logits"], s_out["sel_logits"])
                       + _bernoulli_kl(t_out["sel2_logits"], s_out["sel2_logits"])
                       + 0.5 * _kl(t_out["rel_logits"], s_out["rel_logits"], 1.0)),
         "kd_box": 10 * (s_out["token_boxes"] - t_out["token_boxes"]).abs().sum(-1).mean()}
    del ref  # referring-expression rows are covered by the pointer term
    true_caps = slice(3 * B, 4 * B)
    sim = lambda o: EMBED_SCALE * o["image_embed"] @ o["text_embed"][true_caps].t()  # [B,B]
    L["kd_embed"] = _kl(sim(t_out), sim(s_out), 1.0)
    if s_out["image_embed"].shape[-1] == t_out["image_embed"].shape[-1]:
        cos = lambda a, c: 1.0 - (a * c).sum(-1).mean()
        L["kd_embed"] = L["kd_embed"] + cos(s_out["image_embed"], t_out["image_embed"]) \
            + cos(s_out["text_embed"], t_out["text_embed"])
    if student.decoder is not None and teacher.decoder is not None and cap_tok is not None:
        cap = torch.from_numpy(cap_tok[b.idx])
        s_logits = s_out.get("caption_logits")
        if s_logits is None:
            s_logits = student.decoder(student.decoder.memory(s_img, s_out["token_boxes"]), cap[:, :-1])
        with torch.no_grad():
            t_logits = teacher.decoder(teacher.decoder.memory(t_img, t_out["token_boxes"]), cap[:, :-1])
        keep = cap[:, 1:] != CAP.PAD                                   # positions that predict a real token
        L["kd_caption"] = _kl(t_logits[keep], s_logits[keep], temp)
    return L


def freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


@torch.no_grad()
def divergence(student: SlimPajama, teacher: SlimPajama, cache: D.Cache, n: int = 4, batch: int = 16,
               seed: int = 0, temp: float = 1.0) -> dict[str, float]:
    """Student-teacher divergence on n fixed batches: the mean of each kd_* term (at temperature `temp`)."""
    student, teacher = student.eval(), teacher.eval()
    acc: dict[str, float] = {}
    for k in range(n):
        rng = np.random.default_rng([seed, 101, k])
        b = T.sample_batch(cache, rng.integers(len(cache), size=batch), rng)
        s_img, s_out = T.forward_batch(student, b)
        t_img, t_out = T.forward_batch(teacher, b)
        for name, v in distill_losses(student, teacher, b, s_img, s_out, t_img, t_out, temp, cache.cap_tok).items():
            acc[name] = acc.get(name, 0.0) + float(v) / n
    return acc


def distill(student: SlimPajama, teacher: SlimPajama, cache: D.Cache, a: DistillArgs,
            progress: Callable[[int], None] = lambda k: None) -> dict:
    """Fine-tune `student` in place for a.steps steps on teacher + ground truth; -> a summary (final smoothed
    losses, seconds). The teacher is not changed."""
    torch.manual_seed(a.seed)
    teacher = teacher.eval()   # run under no_grad below; its parameters are left as they are
    targets = training_targets(cache)
    has_caps = cache.cap_tok is not None and student.decoder is not None
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": a.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98))
    sched = T.TrainArgs(steps=a.steps, lr=a.lr, warmup=a.warmup)    # train.lr_at's warm-up + cosine
    rng = np.random.default_rng([a.seed, 23])
    ema: dict[str, float] = {}
    t0 = time.time()
    student.train()
    freeze_batchnorm(student)
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = T.lr_at(step, sched)
        b = T.sample_batch(cache, rng.integers(len(cache), size=a.batch), rng)
        s_img, s_out = T.forward_batch(student, b)
        gt = T.ground_truth_losses(student, None, cache, b, s_img, s_out, *targets)
        with torch.no_grad():
            t_img, t_out = T.forward_batch(teacher, b)
        kd = distill_losses(student, teacher, b, s_img, s_out, t_img, t_out, a.temperature,
                            cache.cap_tok if has_caps else None)
        loss = a.gt_weight * sum(gt.values()) + a.kd_weight * sum(kd.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        cur = {k: float(v.detach()) for k, v in {**gt, **kd}.items()}
        ema = cur if not ema else {k: 0.9 * ema.get(k, cur[k]) + 0.1 * cur[k] for k in cur}
        progress(1)
    student.eval()
    return {"steps": a.steps, "seconds": round(time.time() - t0, 1),
            "final_losses": {k: round(v, 4) for k, v in sorted(ema.items())}}
