"""Structured pruning of a SlimPajama by measured importance: a smaller dense model, not a mask.

What can be removed, each as one coupled group of slices taken out of every tensor it touches:

    attention head j of a layer   rows j*dh..(j+1)*dh of q, k, v (weights and biases), the same
                                  columns of o                                   (dim stays)
    FFN hidden unit u of a layer  row u of fc1 (and its bias), column u of fc2
    stem channel c of conv i<3    output row c of conv i, entry c of the BatchNorm after it
                                  (weight, bias, running mean and variance), input column c of conv i+1
    a whole encoder/fusion layer  the block, its stack renumbered

The model width (`dim`: the residual stream every head reads, and the last stem conv that feeds it)
is not pruned. The caption decoder's FFN width may be pruned; its heads and layers are kept (its
key/value cache is one stacked tensor over layers of equal head count).

Importance (`measure_importance`), on a few calibration batches of the training scene pipeline:
- "taylor" (default): for each group, (sum over the slices that carry its output into the rest of the
  network of weight x gradient)^2, averaged over batches: the first-order change of the training loss
  when the group's output is removed; for a head or FFN unit or stem channel this equals
  |activation x gradient| of its output (Molchanov et al. 2019).
- "magnitude": the L2 norm of every slice of the group (no data needed beyond the layer scores).
Layers are scored by ablation in both: the measured rise of the loss on the calibration batches with
the block skipped (its residual branch removed).

`prune(model, importance, ratios)` keeps the most important groups of each layer and returns a new
SlimPajama of a new Config (per-layer widths in Config.layer_heads / layer_mlp) holding the kept slices.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..model.slimpajama import Config, SlimPajama

# transformer stacks: model attribute (ModuleList of blocks) -> Config field counting its layers
ENCODER_STACKS = {"img_blocks": "image_layers", "txt_blocks": "text_layers", "cross_blocks": "cross_layers",
                  "fusion_blocks": "fusion_layers"}
DECODER_STACK = "decoder"           # model.decoder.blocks; Config.describe_layers
STEM_CONVS = (0, 3, 6, 9)           # indices of the four convs in model.stem (conv, BN, GELU, ...)
WIDTH_MULTIPLE = 8                  # FFN widths and stem channels are kept at multiples of 8 (SIMD widths)
METHODS = ("taylor", "magnitude")


@dataclass(frozen=True)
class Ratios:
    """How much to remove: shares of each layer's heads / FFN units / each stem conv's channels, and a
    number of whole encoder/fusion layers."""
    heads: float = 0.0
    mlp: float = 0.0
    stem: float = 0.0
    layers: int = 0

    def __post_init__(self):
        for k in ("heads", "mlp", "stem"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ValueError(f"{k} ratio must be in [0, 1), not {getattr(self, k)}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, not {self.layers}")

    @property
    def tag(self) -> str:
        """'h25-m50-s25-l1' (zeros left out; 'none' for no pruning)."""
        parts = [f"{k[0]}{round(getattr(self, k) * 100)}" for k in ("heads", "mlp", "stem") if getattr(self, k)]
        parts += [f"l{self.layers}"] if self.layers else []
        return "-".join(parts) or "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> "Ratios":
        """'heads=0.25,mlp=0.5,stem=0.25,layers=1' (any subset; keys may be abbreviated to h, m, s, l)."""
        keys = {"h": "heads", "m": "mlp", "s": "stem", "l": "layers"}
        kw: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            k, sep, v = part.partition("=")
            name = keys.get(k.strip(), k.strip())
            if not sep or name not in keys.values():
                raise ValueError(f"bad pruning ratio {part!r}: write heads=R, mlp=R, stem=R or layers=N")
            try:
                kw[name] = int(v) if name == "layers" else float(v)
            except ValueError:
                raise ValueError(f"bad pruning ratio {part!r}: {v!r} is not a number") from None
        return cls(**kw)


@dataclass
class Importance:
    """Scores per group (larger = more important), from measure_importance."""
    method: str
    heads: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)   # (stack, layer) -> [heads]
    mlp: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)     # (stack, layer) -> [hidden]
    stem: dict[int, np.ndarray] = field(default_factory=dict)                # conv 0..2 -> [channels]
    layers: dict[tuple[str, int], float] = field(default_factory=dict)       # (stack, layer) -> loss rise


def blocks_of(model: SlimPajama) -> dict[str, nn.ModuleList]:
    """Every transformer stack by name (the decoder's when there is one)."""
    out = {s: getattr(model, s) for s in ENCODER_STACKS}
    if model.decoder is not None:
        out[DECODER_STACK] = model.decoder.blocks
    return out


def _attentions(stack: str, block: nn.Module) -> list[nn.Module]:
    return [] if stack == DECODER_STACK else [block.attn]


def _stem_groups(model: SlimPajama):
    """(conv i, its BatchNorm, the next conv) for the three prunable stem convs."""
    s = model.stem
    return [(s[STEM_CONVS[i]], s[STEM_CONVS[i] + 1], s[STEM_CONVS[i + 1]]) for i in range(3)]


class _Skip(nn.Module):
    """A block with its residual branch removed (for layer ablation)."""

    def forward(self, x, *args, **kwargs):
        return x


def measure_importance(model: SlimPajama, loss_batches: Iterable[Callable[[SlimPajama], torch.Tensor]],
                       method: str = "taylor") -> Importance:
    """Score every prunable group of `model` (see the module docstring). Each item of loss_batches computes
    the training loss of one fixed calibration batch for a model given to it (the same batch every call)."""
    if method not in METHODS:
        raise ValueError(f"unknown importance method {method!r}; choose from {', '.join(METHODS)}")
    loss_batches = list(loss_batches)
    model = model.eval()  # BatchNorm on its running statistics: the function being pruned
    imp = Importance(method)
    stacks = blocks_of(model)
    if method == "taylor":
        acc: dict = {}
        for fn in loss_batches:
            model.zero_grad(set_to_none=True)
            fn(model).backward()
            for key, score in _taylor_scores(model, stacks).items():
                acc[key] = acc.get(key, 0.0) + score ** 2 / len(loss_batches)
        model.zero_grad(set_to_none=True)
        for (kind, *where), v in acc.items():
            getattr(imp, kind)[tuple(where) if kind != "stem" else where[0]] = v
    else:
        with torch.no_grad():
            for stack, blocks in stacks.items():
                for i, b in enumerate(blocks):
                    for a in _attentions(stack, b):
                        rows = [t.view(a.h, -1) for t in (a.q.weight, a.k.weight, a.v.weight, a.q.bias, a.k.bias, a.v.bias)]
                        cols = a.o.weight.t().reshape(a.h, -1)
                        imp.heads[(stack, i)] = torch.sqrt(sum((r ** 2).sum(1) for r in rows) + (cols ** 2).sum(1)).numpy()
                    m = b.mlp
                    imp.mlp[(stack, i)] = torch.sqrt((m.fc1.weight ** 2).sum(1) + m.fc1.bias ** 2
                                                     + (m.fc2.weight ** 2).sum(0)).numpy()
            for i, (conv, bn, nxt) in enumerate(_stem_groups(model)):
                sq = (conv.weight ** 2).flatten(1).sum(1) + conv.bias ** 2 + (nxt.weight ** 2).sum((0, 2, 3))
                imp.stem[i] = torch.sqrt(sq * bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)).numpy()
    imp.layers = _layer_ablation(model, loss_batches)
    return imp


def _taylor_scores(model: SlimPajama, stacks: dict[str, nn.ModuleList]) -> dict[tuple, np.ndarray]:
    """Per group, sum of weight x gradient over the slices carrying its output onward (one batch)."""
    wg = lambda p: (p.detach() * p.grad).double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
    out = {}
    for stack, blocks in stacks.items():
        for i, b in enumerate(blocks):
            for a in _attentions(stack, b):
                out[("heads", stack, i)] = wg(a.o.weight).sum(0).view(a.h, a.dh).sum(1).numpy()  # o's columns
            out[("mlp", stack, i)] = wg(b.mlp.fc2.weight).sum(0).numpy()                         # fc2's columns
    for i, (_, _, nxt) in enumerate(_stem_groups(model)):
        out[("stem", i)] = wg(nxt.weight).sum((0, 2, 3)).numpy()                                # next conv's inputs
    return out


@torch.no_grad()
def _layer_ablation(model: SlimPajama, loss_batches) -> dict[tuple[str, int], float]:
    base = sum(float(fn(model)) for fn in loss_batches)
    out = {}
    for stack in ENCODER_STACKS:
        blocks = getattr(model, stack)
        for i in range(len(blocks)):
            kept = blocks[i]
            blocks[i] = _Skip()
            try:
                out[(stack, i)] = (sum(float(fn(model)) for fn in loss_batches) - base) / len(loss_batches)
            finally:
                blocks[i] = kept
    return out


# -- applying a plan --------------------------------------------------------------------------------
def _keep_count(n: int, ratio: float, minimum: int, multiple: int = 1) -> int:
    k = n * (1.0 - ratio)
    k = int(round(k / multiple)) * multiple if multiple > 1 and n >= 2 * multiple else int(round(k))
    return min(n, max(minimum, k))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, in their original order (ties: the earlier index)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
    return np.sort(order)


@dataclass
class Plan:
    """Which slices survive: per (stack, old layer) kept heads / FFN units, kept layers, kept stem channels."""
    layers: dict[str, list[int]]
    heads: dict[tuple[str, int], np.ndarray]
    mlp: dict[tuple[str, int], np.ndarray]
    stem: list[np.ndarray]


def plan(model: SlimPajama, imp: Importance, r: Ratios) -> Plan:
    """Choose what to keep: per layer the most important heads / FFN units, per stem conv its most important
    channels, and overall all but the r.layers encoder/fusion layers whose removal raised the loss least
    (each stack keeps at least one layer)."""
    stacks = blocks_of(model)
    keep_layers = {s: list(range(len(b))) for s, b in stacks.items()}
    removable = sorted(imp.layers, key=lambda k: imp.layers[k])
    dropped = 0
    for stack, i in removable:
        if dropped == r.layers:
            break
        if len(keep_layers[stack]) > 1:
            keep_layers[stack].remove(i)
            dropped += 1
    if dropped < r.layers:
        raise ValueError(f"cannot remove {r.layers} layers: every stack keeps at least one "
                         f"({sum(len(b) - 1 for s, b in stacks.items() if s in ENCODER_STACKS)} removable)")
    heads, mlp = {}, {}
    for stack, blocks in stacks.items():
        for i in keep_layers[stack]:
            b = blocks[i]
            for a in _attentions(stack, b):
                heads[(stack, i)] = _top(imp.heads[(stack, i)], _keep_count(a.h, r.heads, 1))
            n = b.mlp.fc1.out_features
            mlp[(stack, i)] = _top(imp.mlp[(stack, i)], _keep_count(n, r.mlp, WIDTH_MULTIPLE, WIDTH_MULTIPLE))
    stem = [_top(imp.stem[i], _keep_count(conv.out_channels, r.stem, WIDTH_MULTIPLE, WIDTH_MULTIPLE))
            for i, (conv, _, _) in enumerate(_stem_groups(model))]
    return Plan(keep_layers, heads, mlp, stem)


def pruned_config(cfg: Config, p: Plan, name: str | None = None) -> Config:
    d = cfg.to_dict()
    for stack, field_name in {**ENCODER_STACKS, DECODER_STACK: "describe_layers"}.items():
        if stack in p.layers:
            d[field_name] = len(p.layers[stack])
    d["stem"] = tuple(len(s) for s in p.stem)
    lh = {s: [len(p.heads[(s, i)]) for i in p.layers[s]] for s in p.layers if s != DECODER_STACK}
    lm = {s: [len(p.mlp[(s, i)]) for i in p.layers[s]] for s in p.layers}
    new = Config.from_dict({**d, "layer_heads": lh, "layer_mlp": lm, **({"name": name} if name else {})})
    unpruned = Config.from_dict({**d, "layer_heads": None, "layer_mlp": None})
    # widths that all equal the defaults are left out, so an unpruned plan gives the original config back
    if all(new.heads_of(s, i) == unpruned.heads_of(s, i) for s in lh for i in range(len(lh[s]))):
        new.layer_heads = None
    if all(new.mlp_of(s, i) == unpruned.mlp_of(s, i) for s in lm for i in range(len(lm[s]))):
        new.layer_mlp = None
    return new


_BLOCK_KEY = re.compile(r"^(img_blocks|txt_blocks|cross_blocks|fusion_blocks|decoder\.blocks)\.(\d+)\.(.*)$")


def _head_rows(idx: np.ndarray, dh: int) -> torch.Tensor:
    return torch.from_numpy((idx[:, None] * dh + np.arange(dh)[None]).reshape(-1))


def _slice_block_param(stack: str, i: int, rest: str, t: torch.Tensor, p: Plan, dh: int) -> torch.Tensor:
    m = re.match(r"^attn\.([qkvo])\.(weight|bias)$", rest)
    if m and (stack, i) in p.heads:
        rows = _head_rows(p.heads[(stack, i)], dh)
        if m.group(1) != "o":
            return t.index_select(0, rows)
        return t.index_select(1, rows) if m.group(2) == "weight" else t   # o's bias is per model dim
    m = re.match(r"^mlp\.(fc1|fc2)\.(weight|bias)$", rest)
    if m:
        units = torch.from_numpy(p.mlp[(stack, i)])
        if m.group(1) == "fc1":
            return t.index_select(0, units)
        return t.index_select(1, units) if m.group(2) == "weight" else t
    return t


def _slice_stem_param(idx: int, what: str, t: torch.Tensor, p: Plan) -> torch.Tensor:
    convs = list(STEM_CONVS)
    if idx in convs:
        k = convs.index(idx)
        if what == "weight" and k > 0:                  # input channels: the previous conv's kept channels
            t = t.index_select(1, torch.from_numpy(p.stem[k - 1]))
        if k < 3:                                        # output channels (weight rows, bias)
            t = t.index_select(0, torch.from_numpy(p.stem[k]))
        return t
    if idx - 1 in convs[:3] and t.ndim == 1 and what != "num_batches_tracked":   # the BatchNorm after conv k
        return t.index_select(0, torch.from_numpy(p.stem[convs.index(idx - 1)]))
    return t


def apply_plan(model: SlimPajama, p: Plan, name: str | None = None) -> SlimPajama:
    """A new dense SlimPajama holding exactly the kept slices of `model` (strict load: every shape checked)."""
    cfg = pruned_config(model.cfg, p, name)
    dh = model.cfg.dim // model.cfg.heads
    renumber = {(s if s != DECODER_STACK else "decoder.blocks", old): new
                for s, kept in p.layers.items() for new, old in enumerate(kept)}
    state = {}
    for key, t in model.state_dict().items():
        m = _BLOCK_KEY.match(key)
        if m:
            stack_attr, i, rest = m.group(1), int(m.group(2)), m.group(3)
            if (stack_attr, i) not in renumber:
                continue                                             # a removed layer
            stack = DECODER_STACK if stack_attr == "decoder.blocks" else stack_attr
            state[f"{stack_attr}.{renumber[(stack_attr, i)]}.{rest}"] = _slice_block_param(stack, i, rest, t, p, dh)
            continue
        m = re.match(r"^stem\.(\d+)\.(.*)$", key)
        state[key] = _slice_stem_param(int(m.group(1)), m.group(2), t, p) if m else t
    out = SlimPajama(cfg)
    out.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    return out.train(model.training)


def prune(model: SlimPajama, imp: Importance, r: Ratios, name: str | None = None) -> SlimPajama:
    """The pruned model (a new module; `model` is left as it was)."""
    return apply_plan(model, plan(model, imp, r), name)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
