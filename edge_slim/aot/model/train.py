"""Joint training of SlimPajama's three heads on generated scenes.

Each step encodes B images once and runs five texts per image through fusion:
two questions, one referring expression, one true and one false caption. Losses:
VQA cross-entropy, image-text matching (binary), locating (pointer cross-entropy +
L1 box), CLIP-style contrastive loss on pooled embeddings, and an auxiliary
per-cell attribute loss on the image tokens that teaches the image tower what is
where (train-only; not exported). A model with a caption decoder (describe) also
learns each image's reference caption by teacher forcing (next-token cross-entropy).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import BadInputError
from ...scenes import caption as CAP
from ...scenes import renderers as R
from ...scenes.grammar import ANSWERS, COLORS, SHAPES, SIZES, vocabulary
from ...vision.preprocess import MEAN, STD
from . import data as D
from .slimpajama import Config, SlimPajama, config_for


@dataclass
class TrainArgs:
    size: str = "tiny"
    steps: int = 20000
    batch: int = 48
    lr: float = 2e-3
    warmup: int = 400
    weight_decay: float = 0.05
    scenes: int = 100000
    seed: int = 0
    out: str = "runs/tiny"
    cache_dir: str = str(Path.home() / ".cache" / "edge-slim")
    ckpt_every: int = 500
    eval_every: int = 2000
    eval_samples: int = 300
    threads: int = 0
    init_from: str = ""  # warm-start weights from this checkpoint (new parameters keep their init)
    minutes: float = 0.0  # if set, the schedule runs on wall-clock time and training stops at the budget
    renderers: str = "flat"  # training renderer mix, e.g. "flat:0.2,varied2d:0.4,raycast:0.4" (scenes/renderers.py)
    overrides: dict = field(default_factory=dict)


class AuxHead(nn.Module):
    """Per image token: colour, shape and size of the object centred in its cell (or none)."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, (len(COLORS) + 1) + (len(SHAPES) + 1) + (len(SIZES) + 1))

    def forward(self, img):
        o = self.fc(img)
        a, b = len(COLORS) + 1, len(SHAPES) + 1
        return o[..., :a], o[..., a:a + b], o[..., a + b:]


def to_tensor_images(u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.require(u8, requirements="W")).float().mul_(1 / 255.0).sub_(MEAN).div_(STD)
    return x.permute(0, 3, 1, 2).contiguous()


def progress_of(step: int, elapsed_s: float, a: TrainArgs) -> float:
    """Fraction of training done: by steps, or by wall-clock time when a.minutes is set
    (a time budget keeps the cosine schedule whole on a machine whose speed varies)."""
    p = step / max(1, a.steps)
    return max(p, elapsed_s / (60 * a.minutes)) if a.minutes else p


def lr_at(step: int, a: TrainArgs, p: float | None = None) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = (step - a.warmup) / max(1, a.steps - a.warmup) if p is None else p
    return a.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def text_targets(tok: np.ndarray, cells: np.ndarray) -> dict:
    """Grounding targets for cached texts [N,K,L], read off their tokens and the per-cell attribute
    table cells [N,36,3] (the only attribute words in a text are its descriptions'), so no scene is
    re-generated. A text's first description ends at its relation word or "and"; the rest is the second.

    sel1, sel2 [N,K,36]  cells whose object fits the first / second description
    has2 [N,K]           the text has a second description
    rel [N,K]            index of its relation (left of, right of, above, below), or -1
    """
    from ...scenes.grammar import SHAPE_PLURALS
    vocab = vocabulary()
    attr_of = np.full(len(vocab), -1)
    value_of = np.full(len(vocab), -1)
    for k, values in enumerate((list(COLORS), list(SHAPES), list(SIZES))):
        for v, w in enumerate(values):
            for word in (w, SHAPE_PLURALS[w]) if k == 1 else (w,):
                attr_of[vocab.index(word)], value_of[vocab.index(word)] = k, v
    rel_words = [vocab.index(w) for w in ("left", "right", "above", "below")]
    is_rel = np.isin(tok, rel_words)
    is_split = is_rel | (tok == vocab.index("and"))
    L = tok.shape[-1]
    split = np.where(is_split.any(-1), is_split.argmax(-1), L)                # [N,K]
    rel_tok = np.take_along_axis(tok, np.minimum(split, L - 1)[..., None], -1)[..., 0]
    rel_of = np.full(len(vocab), -1)
    rel_of[rel_words] = np.arange(4)
    rel = np.where(split < L, rel_of[rel_tok], -1)                            # "and" gives -1 too
    first = np.arange(L) < split[..., None]

    def fits(where):  # [N,K,L] token mask -> [N,K,36] cells matching the attributes found there
        m = cells[:, None, :, 0] > 0
        for k in range(3):
            req = np.where(where & (attr_of[tok] == k), value_of[tok], -1).max(-1)
            m = m & ((req[..., None] < 0) | (cells[:, None, :, k] == req[..., None] + 1))
        return m

    return {"sel1": fits(first), "sel2": fits(~first & (tok != 0)), "has2": split < L, "rel": rel}


def question_targets(cache: D.Cache) -> dict:
    """Targets for the cached questions: text_targets plus the pointers' cells

    p1  [N,NQ]  the one object a color/shape/size question is about, or a spatial question's first (-1: none)
    p2  [N,NQ]  a spatial question's second object (-1: none)
    """
    from ...scenes.grammar import FAMILIES
    t = text_targets(cache.q_tok, cache.cells)
    f = {n: cache.q_fam == FAMILIES.index(n) for n in FAMILIES}
    unique = lambda m, ok: np.where(ok & (m.sum(-1) == 1), m.argmax(-1), -1)
    t["p1"] = unique(t["sel1"], f["spatial"] | f["color"] | f["shape"] | f["size"])
    t["p2"] = unique(t["sel2"], f["spatial"])
    t["has2"] &= f["spatial"]
    return t


@dataclass
class Batch:
    """One step's draw from the cache: B images and five texts per image, ordered task-major (two
    questions, one referring expression, one true and one false caption: text t -> image t % B)."""
    idx: np.ndarray       # [B] scene indices
    qs: np.ndarray        # [2,B] question slots
    r: np.ndarray         # [B] referring-expression slot
    ct: np.ndarray        # [B] true-caption slot
    cf: np.ndarray        # [B] false-caption slot
    tokens: np.ndarray    # int64 [5B,L]
    image: torch.Tensor   # [B,3,96,96] normalized


def sample_batch(cache: D.Cache, idx: np.ndarray, rng: np.random.Generator) -> Batch:
    B = len(idx)
    qs = rng.integers(D.NQ, size=(2, B))
    r = rng.integers(D.NR, size=B)
    ct, cf = rng.integers(D.NC, size=B), rng.integers(D.NC, size=B)
    tokens = np.concatenate([cache.q_tok[idx, qs[0]], cache.q_tok[idx, qs[1]], cache.r_tok[idx, r],
                             cache.c_true[idx, ct], cache.c_false[idx, cf]])
    return Batch(idx, qs, r, ct, cf, tokens, to_tensor_images(cache.images[idx]))


def forward_batch(model: SlimPajama, b: Batch) -> tuple[torch.Tensor, dict]:
    """-> (image tokens [B,36,d], every head's output for the 5B texts)."""
    img = model.encode_image(b.image)                           # [B,36,d]
    txt, valid, bias = model.encode_text(torch.from_numpy(b.tokens))
    return img, model.heads(img, txt, valid, bias)


def batch_losses(model: SlimPajama, aux: AuxHead, cache: D.Cache, idx: np.ndarray, rng: np.random.Generator,
                 qt: dict | None = None, ct_t: dict | None = None, cf_t: dict | None = None):
    b = sample_batch(cache, idx, rng)
    img, o = forward_batch(model, b)
    return ground_truth_losses(model, aux, cache, b, img, o, qt, ct_t, cf_t)


def ground_truth_losses(model: SlimPajama, aux: AuxHead | None, cache: D.Cache, b: Batch, img: torch.Tensor,
                        o: dict, qt: dict | None = None, ct_t: dict | None = None, cf_t: dict | None = None) -> dict:
    """The training losses of one batch against the scenes' truth. With a caption decoder, its logits
    are left in o["caption_logits"] (distillation reads them); aux=None skips the auxiliary cell loss."""
    idx, qs, r, ct, cf = b.idx, b.qs, b.r, b.ct, b.cf
    B = len(idx)
    ans = torch.from_numpy(np.concatenate([cache.q_ans[idx, qs[0]], cache.q_ans[idx, qs[1]]]))
    L = {}
    L["vqa"] = F.cross_entropy(o["answer_logits"][:2 * B], ans)
    m = o["match_logit"][3 * B:]
    L["match"] = F.binary_cross_entropy_with_logits(m, torch.cat([torch.ones(B), torch.zeros(B)]))
    cell = torch.from_numpy(cache.r_cell[idx, r])
    L["loc"] = F.cross_entropy(o["loc_logits"][2 * B:3 * B], cell)
    if qt is not None:  # ground the questions too: pointers on the objects they are about
        both = lambda a: torch.from_numpy(np.concatenate([a[idx, qs[0]], a[idx, qs[1]]]))
        p1, p2 = both(qt["p1"]), both(qt["p2"])
        L["ptr"] = 0.5 * F.cross_entropy(o["loc_logits"][:2 * B], p1, ignore_index=-1)
        if (p2 >= 0).any():
            L["ptr2"] = 0.5 * F.cross_entropy(o["loc2_logits"][:2 * B], p2, ignore_index=-1)
    if qt is not None and ct_t is not None:  # selections, relation and pairs for questions and captions alike
        txt_rows = np.concatenate([np.arange(2 * B), np.arange(3 * B, 5 * B)])
        pick = lambda k: torch.from_numpy(np.concatenate([qt[k][idx, qs[0]], qt[k][idx, qs[1]],
                                                          ct_t[k][idx, ct], cf_t[k][idx, cf]]))
        s1, s2, has2, rel = pick("sel1").float(), pick("sel2").float(), pick("has2"), pick("rel")
        L["sel"] = F.binary_cross_entropy_with_logits(o["sel_logits"][txt_rows], s1)
        L["sel2"] = F.binary_cross_entropy_with_logits(o["sel2_logits"][txt_rows][has2], s2[has2])
        L["rel"] = 0.5 * F.cross_entropy(o["rel_logits"][txt_rows], rel, ignore_index=-1)
    boxes = o["token_boxes"]                                     # [B,36,4] (image-only)
    has = torch.from_numpy(cache.cells[idx, :, 0] > 0)            # [B,36] cells holding an object
    gt = torch.from_numpy(cache.cell_box[idx])
    L["box"] = 10 * (boxes - gt).abs().sum(-1)[has].mean()
    ie, te = o["image_embed"], o["text_embed"][3 * B:4 * B]
    logits = model.logit_scale.exp().clamp(max=100) * ie @ te.t()
    tgt = torch.arange(B)
    L["clip"] = 0.5 * (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.t(), tgt))
    if model.decoder is not None and cache.cap_tok is not None:  # describe: teacher forcing on the caption
        cap = torch.from_numpy(cache.cap_tok[idx])                 # [B,Lc] bos ... eos pad
        logits = model.decoder(model.decoder.memory(img, boxes), cap[:, :-1])  # [B,Lc-1,V]
        L["caption"] = F.cross_entropy(logits.flatten(0, 1), cap[:, 1:].flatten(), ignore_index=CAP.PAD)
        o["caption_logits"] = logits
    if aux is None:
        return L
    cells = torch.from_numpy(cache.cells[idx])                   # [B,36,3]
    ac, ash, asz = aux(img)
    L["aux"] = (F.cross_entropy(ac.flatten(0, 1), cells[..., 0].flatten())
                + F.cross_entropy(ash.flatten(0, 1), cells[..., 1].flatten())
                + F.cross_entropy(asz.flatten(0, 1), cells[..., 2].flatten())) / 3
    return L


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(a: TrainArgs, log=print) -> Path:
    """Train (or resume) into a.out; returns the path of the final checkpoint."""
    torch.manual_seed(a.seed)
    # Tiny gradients and Adam moments drift into denormal floats, which are many times slower
    # on x86; flushing them to zero costs nothing in accuracy.
    torch.set_flush_denormal(True)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_for(a.size, vocab_size=len(vocabulary()), num_answers=len(ANSWERS),
                     caption_vocab=len(CAP.CAPTION_VOCAB), caption_len=CAP.MAX_TOKENS, **a.overrides)
    model, aux = SlimPajama(cfg), AuxHead(cfg.dim)
    params = list(model.parameters()) + list(aux.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98))
    ckpt, step, elapsed, bn_from_bundle = out / "last.pt", 0, 0.0, False
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        if st.get("config", {}).get("describe_layers", 0) != cfg.describe_layers:
            raise BadInputError(f"{ckpt} was trained with describe_layers={st.get('config', {}).get('describe_layers', 0)}"
                             f", this run has {cfg.describe_layers}; train into a new --out (with --init-from "
                             f"{ckpt} to warm-start from it)")
        model.load_state_dict(st["model"])
        aux.load_state_dict(st["aux"])
        opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st.get("elapsed_s", 0.0)
        log(f"resumed from {ckpt} at step {step}")
    elif a.init_from and not Path(a.init_from).exists():
        raise BadInputError(f"--init-from {a.init_from}: no such checkpoint or bundle")
    elif a.init_from and Path(a.init_from).is_dir():  # an exported fp32 bundle (aot/model/from_bundle.py)
        from .from_bundle import model_from_bundle
        src = model_from_bundle(a.init_from, describe_layers=cfg.describe_layers)
        if src.cfg != cfg:
            raise BadInputError(f"{a.init_from} has config {src.cfg.to_dict()}, this run wants {cfg.to_dict()}")
        model.load_state_dict(src.state_dict())
        bn_from_bundle = True
        log(f"warm start from bundle {a.init_from}; new parameters: {src.new_parameters}")
    elif a.init_from:
        st = torch.load(a.init_from, weights_only=False)
        own = model.state_dict()
        keep = {k: v for k, v in st["model"].items() if k in own and own[k].shape == v.shape}
        missing, unexpected = model.load_state_dict(keep, strict=False)
        unexpected = sorted(set(st["model"]) - set(keep))
        aux.load_state_dict(st["aux"])
        log(f"warm start from {a.init_from}; new parameters: {missing}; dropped: {unexpected}")
    cache = scene_cache(a, cfg, log)
    if model.decoder is not None and (cache.cap_tok is None or cache.cap_tok.shape[1] != cfg.caption_len):
        raise BadInputError(f"the scene cache in {a.cache_dir} has no caption targets of length {cfg.caption_len} "
                         "(built by an older edge-slim); delete it to re-render, or pass another --cache-dir")
    if bn_from_bundle:  # folded BatchNorms: give them the statistics of training images
        from .from_bundle import calibrate_batchnorm
        calibrate_batchnorm(model, to_tensor_images(cache.images[np.random.default_rng(a.seed).integers(len(cache), size=256)]))
    qt = question_targets(cache)
    ct_t, cf_t = text_targets(cache.c_true, cache.cells), text_targets(cache.c_false, cache.cells)
    rng = np.random.default_rng([a.seed, step])
    (out / "args.json").write_text(json.dumps({**a.__dict__, "config": cfg.to_dict()}, indent=1))
    from tqdm import tqdm
    bar = tqdm(total=None if a.minutes else a.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=5)
    ema, t0 = None, time.time() - elapsed
    model.train()
    while progress_of(step, time.time() - t0, a) < 1.0:
        lr = lr_at(step, a, progress_of(step, time.time() - t0, a) if a.minutes else None)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(len(cache), size=a.batch)
        L = batch_losses(model, aux, cache, idx, rng, qt, ct_t, cf_t)
        loss = sum(L.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        cur = {k: float(v.detach()) for k, v in L.items()}
        ema = cur if ema is None else {k: 0.98 * ema.get(k, cur[k]) + 0.02 * cur[k] for k in cur}
        bar.update(1)
        bar.set_postfix(loss=f"{sum(ema.values()):.3f}", vqa=f"{ema['vqa']:.3f}", refresh=False)
        if step % 100 == 0:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "lr": lr, "time_s": round(time.time() - t0, 1),
                                    **{k: round(v, 4) for k, v in ema.items()}}) + "\n")
        done = progress_of(step, time.time() - t0, a) >= 1.0
        if step % a.ckpt_every == 0 or done:
            _atomic_save({"model": model.state_dict(), "aux": aux.state_dict(), "opt": opt.state_dict(),
                          "step": step, "elapsed_s": time.time() - t0, "config": cfg.to_dict(),
                          "args": a.__dict__}, ckpt)
        if a.eval_every and (step % a.eval_every == 0 or done):
            from .torch_eval import evaluate_torch
            model.eval()
            names = sorted(R.parse_mix(a.renderers)) + ([] if a.renderers == "flat" else ["unseen"])
            r = {n: evaluate_torch(model, samples=a.eval_samples, seed=a.seed + 1, renderer=n) for n in names}
            r = r["flat"] if names == ["flat"] else r
            model.train()
            log(f"step {step}: " + json.dumps(r))
            with open(out / "eval.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **r}) + "\n")
    bar.close()
    return ckpt


def scene_cache(a: TrainArgs, cfg: Config, log) -> D.Cache:
    """The rendered training scenes for (seed, count, token length, renderer mix): loaded from the cache file, or
    rendered once and saved there (shared by train and slim, which fine-tunes on the same scenes)."""
    path = Path(a.cache_dir) / f"scenes-s{a.seed}-n{a.scenes}-L{cfg.max_tokens}{D.mix_tag(a.renderers)}.npz"
    if path.exists():
        log(f"scene cache: {path}")
        return D.load_cache(path)
    from tqdm import tqdm
    log(f"rendering {a.scenes} scenes into {path} (once)")
    with tqdm(total=a.scenes, desc="render", dynamic_ncols=True) as bar:
        cache = D.build_cache(a.scenes, seed=a.seed, max_len=cfg.max_tokens, progress=bar.update, renderers=a.renderers)
    path.parent.mkdir(parents=True, exist_ok=True)
    D.save_cache(cache, path)
    return cache


def load_checkpoint(path) -> SlimPajama:
    st = torch.load(path, weights_only=False, map_location="cpu")
    model = SlimPajama(Config.from_dict(st["config"]))
    model.load_state_dict(st["model"])
    model.trained_steps = st.get("step")
    return model.eval()
