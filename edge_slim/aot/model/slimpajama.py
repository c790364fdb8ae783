"""SlimPajama: a compact image+text transformer with VQA, matching and locating heads.

    image [B,3,96,96] -> CNN stem (4 stride-2 convs) -> 6x6 patch tokens -> image encoder
    tokens [B,L] (task token first) -> embeddings + positions -> text encoder
    fusion: text tokens cross-attend to image tokens, then self-attention over
            [text ; image] -> heads read the task token (position 0)
    heads:  answer logits (VQA), match logit (image-text matching, cross-encoder),
            box (pointer over image tokens + per-token box), contrastive embeddings.
    describe (when describe_layers > 0): a small autoregressive caption decoder (causal
            self-attention + cross-attention to the image tokens) over its own vocabulary
            (edge_slim.scenes.caption); the exported graph also outputs its memory tokens.

Attention is written out (matmul + softmax) rather than with nn.MultiheadAttention so
that the ONNX graph is plain MatMul/Softmax that every backend here can run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e4  # additive mask value; finite so fp16 and int8 graphs stay well defined


@dataclass
class Config:
    name: str = "slimpajama-tiny"
    image_size: int = 96
    grid: int = 6               # image tokens per side (image_size / 16)
    stem: tuple = (32, 64, 96)  # channels of the first three convs; the fourth gives dim
    dim: int = 128
    heads: int = 4
    mlp_ratio: int = 4
    image_layers: int = 2
    text_layers: int = 2
    cross_layers: int = 2
    fusion_layers: int = 1
    max_tokens: int = 16
    vocab_size: int = 44
    num_answers: int = 24
    embed_dim: int = 64
    max_count: int = 6          # the count feature's bins are 0..max_count
    # Caption decoder (describe). 0 layers = none: checkpoints saved before it existed have no
    # such keys in their config and load as decoder-less models.
    describe_layers: int = 0
    describe_mlp_ratio: int = 2
    caption_vocab: int = 25     # len(edge_slim.scenes.caption.CAPTION_VOCAB)
    caption_len: int = 41       # edge_slim.scenes.caption.MAX_TOKENS (bos ... eos)
    # Per-layer widths of a structurally pruned model (edge_slim/aot/slim/prune.py): stack name
    # ("img_blocks", "txt_blocks", "cross_blocks", "fusion_blocks", "decoder") -> one head count /
    # MLP hidden width per layer. None (every unpruned model): `heads` and dim * mlp_ratio everywhere;
    # a head is always dim // heads wide. Left out of to_dict when None, so manifests stay as they were.
    layer_heads: dict | None = None
    layer_mlp: dict | None = None

    def heads_of(self, stack: str, i: int) -> int:
        return self.layer_heads[stack][i] if self.layer_heads and stack in self.layer_heads else self.heads

    def mlp_of(self, stack: str, i: int) -> int:
        if self.layer_mlp and stack in self.layer_mlp:
            return self.layer_mlp[stack][i]
        return self.dim * (self.describe_mlp_ratio if stack == "decoder" else self.mlp_ratio)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stem"] = list(self.stem)
        for k in ("layer_heads", "layer_mlp"):
            if d[k] is None:
                del d[k]
            else:
                d[k] = {s: list(v) for s, v in d[k].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        d["stem"] = tuple(d["stem"])
        return cls(**d)


SIZES = {
    "tiny": dict(name="slimpajama-tiny", describe_layers=2),
    "small": dict(name="slimpajama-small", stem=(32, 64, 128), dim=192, heads=6,
                  image_layers=3, text_layers=3, cross_layers=2, fusion_layers=2, describe_layers=2),
}


def config_for(size: str, **overrides) -> Config:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return Config(**{**SIZES[size], **overrides})


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int | None = None):
        super().__init__()
        self.h, self.dh = heads, head_dim or dim // heads
        inner = self.h * self.dh  # = dim unless heads were pruned
        self.q, self.k, self.v = (nn.Linear(dim, inner) for _ in range(3))
        self.o = nn.Linear(inner, dim)

    def forward(self, x, ctx, bias=None):
        B, T, C = x.shape
        Bc, S = ctx.shape[0], ctx.shape[1]
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)     # [B,h,T,dh]
        k = self.k(ctx).view(Bc, S, self.h, self.dh).transpose(1, 2)  # [Bc,h,S,dh]
        v = self.v(ctx).view(Bc, S, self.h, self.dh).transpose(1, 2)
        if Bc != B:  # training: several texts per image; project each image once, then repeat
            k, v = k.repeat(B // Bc, 1, 1, 1), v.repeat(B // Bc, 1, 1, 1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))  # [B,h,T,S]
        if bias is not None:
            att = att + bias  # [B,1,1,S] key-padding bias
        y = att.softmax(-1) @ v                                     # [B,h,T,dh]
        return self.o(y.transpose(1, 2).reshape(B, T, self.h * self.dh))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; with `cross=True` the attention reads another sequence."""

    def __init__(self, dim: int, heads: int, hidden: int, cross: bool = False, head_dim: int | None = None):
        super().__init__()
        self.cross = cross
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.lnc = nn.LayerNorm(dim) if cross else None
        self.attn, self.mlp = Attention(dim, heads, head_dim), MLP(dim, hidden)

    def forward(self, x, ctx=None, bias=None):
        h = self.ln1(x)
        x = x + self.attn(h, self.lnc(ctx) if self.cross else h, bias)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Pre-LN decoder block: causal self-attention over the caption so far, cross-attention to the
    image memory, MLP. `step` is the same computation for one new token with a key/value cache."""

    def __init__(self, dim: int, heads: int, hidden: int, head_dim: int | None = None):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn, self.cross_attn = Attention(dim, heads, head_dim), Attention(dim, heads, head_dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x, memory, causal):
        h = self.ln1(x)
        x = x + self.self_attn(h, h, causal)          # causal [T,T] additive mask
        x = x + self.cross_attn(self.ln2(x), memory)
        return x + self.mlp(self.ln3(x))

    def step(self, x, memory, past_k, past_v, write, bias):
        """x [B,1,d]; past_k/v [B,h,Lc,dh]; write [1,1,Lc,1] one-hot of this position; bias [1,1,1,Lc]."""
        a = self.self_attn
        B = x.shape[0]
        h = self.ln1(x)
        q = a.q(h).view(B, 1, a.h, a.dh).transpose(1, 2)            # [B,h,1,dh]
        k = a.k(h).view(B, 1, a.h, a.dh).transpose(1, 2)
        v = a.v(h).view(B, 1, a.h, a.dh).transpose(1, 2)
        k = past_k * (1.0 - write) + k * write                      # [B,h,Lc,dh] this token's key written in
        v = past_v * (1.0 - write) + v * write
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(a.dh)) + bias  # [B,h,1,Lc] later slots masked
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, 1, a.h * a.dh)
        x = x + a.o(y)
        x = x + self.cross_attn(self.ln2(x), memory)
        return x + self.mlp(self.ln3(x)), k, v


class CaptionDecoder(nn.Module):
    """Autoregressive caption decoder over the image tokens (the `describe` head).

    memory: image tokens plus a projection of their predicted boxes (explicit positions for the
    relation words). forward: teacher forcing / re-running a prefix; step: one token with a cache.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        d, self.L = cfg.dim, cfg.caption_len
        self.box_proj = nn.Linear(4, d)
        self.mem_ln = nn.LayerNorm(d)
        self.emb = nn.Embedding(cfg.caption_vocab, d)
        self.pos = nn.Parameter(torch.randn(1, cfg.caption_len, d) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(d, cfg.heads, cfg.mlp_of("decoder", i), d // cfg.heads)
                                    for i in range(cfg.describe_layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.caption_vocab)
        causal = torch.triu(torch.full((cfg.caption_len, cfg.caption_len), NEG), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)      # [Lc,Lc]
        self.register_buffer("slots", torch.arange(cfg.caption_len), persistent=False)

    def memory(self, img, token_boxes):
        return self.mem_ln(img + self.box_proj(token_boxes))       # [B,N,d]

    def forward(self, memory, tokens):
        """tokens [B,T] (bos first) -> next-token logits [B,T,V] at every position."""
        T = tokens.shape[1]
        x = self.emb(tokens) + self.pos[:, :T]
        for b in self.blocks:
            x = b(x, memory, self.causal[:T, :T])
        return self.head(self.ln(x))

    def step(self, memory, token, pos, past_k, past_v):
        """token [B,1], pos int64 [1] (its position), past_k/v [layers,B,h,Lc,dh] ->
        (logits [B,V] for the next token, present_k, present_v)."""
        write = (self.slots == pos).float()[None, None, :, None]  # [1,1,Lc,1]
        bias = (self.slots > pos).float()[None, None, None, :] * NEG  # [1,1,1,Lc]
        x = self.emb(token) + self.pos[0].index_select(0, pos)[None]  # [B,1,d] (a Gather, not GatherND)
        ks, vs = [], []
        for i, b in enumerate(self.blocks):
            x, k, v = b.step(x, memory, past_k[i], past_v[i], write, bias)
            ks.append(k)
            vs.append(v)
        return self.head(self.ln(x))[:, 0], torch.stack(ks), torch.stack(vs)

    def cache_shape(self, batch: int = 1) -> tuple[int, ...]:
        a = self.blocks[0].self_attn
        return (len(self.blocks), batch, a.h, self.L, a.dh)


class SlimPajama(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        c, d = cfg.stem, cfg.dim
        chans = (3, *c, d)
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
        self.stem = nn.Sequential(*layers[:-1])  # last conv output feeds the token projection unactivated
        n_img = cfg.grid * cfg.grid
        self.img_pos = nn.Parameter(torch.randn(1, n_img, d) * 0.02)
        block = lambda stack, i, cross=False: Block(d, cfg.heads_of(stack, i), cfg.mlp_of(stack, i), cross, d // cfg.heads)
        self.img_blocks = nn.ModuleList(block("img_blocks", i) for i in range(cfg.image_layers))
        self.img_ln = nn.LayerNorm(d)
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.txt_pos = nn.Parameter(torch.randn(1, cfg.max_tokens, d) * 0.02)
        self.txt_blocks = nn.ModuleList(block("txt_blocks", i) for i in range(cfg.text_layers))
        self.txt_ln = nn.LayerNorm(d)
        self.cross_blocks = nn.ModuleList(block("cross_blocks", i, True) for i in range(cfg.cross_layers))
        self.fusion_blocks = nn.ModuleList(block("fusion_blocks", i) for i in range(cfg.fusion_layers))
        self.out_ln = nn.LayerNorm(d)
        self.answer_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.num_answers))
        self.match_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.loc_q, self.loc_k = nn.Linear(d, d), nn.Linear(d, d)
        # The pointer's pooled object feeds the answer and match heads: the pointer learns to ground
        # a description fast from its direct supervision (locate), and reading an attribute off the
        # object it points at is then easy; starts at zero so it can be added to a trained model.
        self.obj_proj = nn.Linear(d, d)
        # A second pointer for the other object of a relation; the two pointed-at box centres give
        # the answer head explicit positions to compare (left/right/above/below).
        self.loc2_q = nn.Linear(d, d)
        self.rel_proj = nn.Linear(6, d)
        # Sigmoid selection over image tokens: which objects fit the description. Its sum is a soft
        # count, binned (triangular) so the answer head can read 0..max_count.
        self.sel_q, self.sel_k = nn.Linear(d, d), nn.Linear(d, d)
        self.count_proj = nn.Linear(cfg.max_count + 1, d)
        # A second selection (a caption's or relation's other description), a relation classifier, and
        # the soft number of (first, second) object pairs in that relation: enough to check "a red cube
        # left of a blue sphere" or "is the cone above the cube?" from the box centres.
        self.sel2_q = nn.Linear(d, d)
        self.count2_proj = nn.Linear(cfg.max_count + 1, d)
        self.rel_cls = nn.Linear(d, 4)  # left of, right of, above, below
        self.pair_proj = nn.Linear(2, d)
        self.register_buffer("count_bins", torch.arange(cfg.max_count + 1, dtype=torch.float32), persistent=False)
        self.box_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 4))
        self.img_proj, self.txt_proj = nn.Linear(d, cfg.embed_dim), nn.Linear(d, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # per-cell grid offsets used to turn per-token box predictions into image boxes
        g = torch.arange(cfg.grid, dtype=torch.float32)
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        self.register_buffer("cell_xy", torch.stack([gx.flatten(), gy.flatten()], -1), persistent=False)  # [N,2]
        self.decoder = CaptionDecoder(cfg) if cfg.describe_layers else None
        self.apply(self._init)
        for m in (self.obj_proj, self.rel_proj, self.count_proj, self.count2_proj, self.pair_proj):  # new paths start neutral
            nn.init.zeros_(m.weight)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # -- towers ------------------------------------------------------------------------------
    def encode_image(self, image):
        x = self.stem(image)                          # [B,d,6,6]
        x = x.flatten(2).transpose(1, 2) + self.img_pos  # [B,36,d]
        for b in self.img_blocks:
            x = b(x)
        return self.img_ln(x)

    def encode_text(self, tokens):
        valid = (tokens != 0).float()                 # [B,L]
        bias = ((1.0 - valid) * NEG)[:, None, None, :]  # [B,1,1,L]
        x = self.tok_emb(tokens) + self.txt_pos
        for b in self.txt_blocks:
            x = b(x, bias=bias)
        return self.txt_ln(x), valid, bias

    def fuse(self, img, txt, bias):
        """Text tokens cross-attend to the image, then self-attend over the fused text sequence.

        `img` may hold fewer rows than `txt` (training: several texts per image, repeated in order).
        """
        x = txt
        for b in self.cross_blocks:
            x = b(x, img)                             # [B,L,d] text queries over image tokens
        for b in self.fusion_blocks:
            x = b(x, bias=bias)                       # [B,L,d] self-attention over the fused sequence
        return self.out_ln(x)[:, 0]                   # the task token [B,d]

    # -- heads -------------------------------------------------------------------------------
    def boxes(self, img_tokens):
        """Per-token boxes [B,N,4] (x0,y0,x1,y1 in [0,1]): centre inside its cell, size up to half the image."""
        raw = self.box_head(img_tokens)
        c = (self.cell_xy + torch.sigmoid(raw[..., :2])) / self.cfg.grid
        wh = torch.sigmoid(raw[..., 2:]) * 0.5
        return torch.cat([c - wh / 2, c + wh / 2], -1)

    def heads(self, img, txt, valid, bias):
        """All heads. `img` [Bi,N,d] may have fewer rows than the texts (see fuse); the
        image-only outputs (token_boxes, image_embed) keep Bi rows."""
        cls = self.fuse(img, txt, bias)
        B, Bi = cls.shape[0], img.shape[0]
        r = B // Bi
        rep = (lambda t: t.repeat(r, *([1] * (t.dim() - 1)))) if r != 1 else (lambda t: t)
        scale = 1.0 / math.sqrt(self.cfg.dim)
        k, imgs = rep(self.loc_k(img)), rep(img)                               # [B,N,d]
        token_boxes = self.boxes(img)                                          # [Bi,N,4]
        centres = rep((token_boxes[..., :2] + token_boxes[..., 2:]) * 0.5)     # [B,N,2]
        loc_logits = (self.loc_q(cls)[:, None, :] @ k.transpose(1, 2))[:, 0] * scale    # [B,N] pointer
        loc2_logits = (self.loc2_q(cls)[:, None, :] @ k.transpose(1, 2))[:, 0] * scale  # [B,N] 2nd pointer
        p1, p2 = loc_logits.softmax(-1)[:, None, :], loc2_logits.softmax(-1)[:, None, :]
        obj = (p1 @ imgs)[:, 0]                                                # [B,d] the object pointed at
        xy1, xy2 = (p1 @ centres)[:, 0], (p2 @ centres)[:, 0]                  # [B,2] their box centres
        sk = rep(self.sel_k(img)).transpose(1, 2)                              # [B,d,N]
        sel_logits = (self.sel_q(cls)[:, None, :] @ sk)[:, 0] * scale           # [B,N]
        sel2_logits = (self.sel2_q(cls)[:, None, :] @ sk)[:, 0] * scale         # [B,N]
        s1, s2 = torch.sigmoid(sel_logits), torch.sigmoid(sel2_logits)
        bins = torch.relu(1.0 - (s1.sum(-1, keepdim=True) - self.count_bins).abs())   # [B,max_count+1]
        bins2 = torch.relu(1.0 - (s2.sum(-1, keepdim=True) - self.count_bins).abs())
        rel_logits = self.rel_cls(cls)                                         # [B,4]
        x, y = centres[..., 0], centres[..., 1]                                # [B,N]
        dx, dy = x[:, None, :] - x[:, :, None], y[:, None, :] - y[:, :, None]  # [B,N(i),N(j)]: j minus i
        holds = torch.sigmoid((torch.stack([dx, -dx, dy, -dy], 1) - 3.0 / 96) * 200.0)  # [B,4,N,N] "i rel j"
        pairs = ((s1[:, None, :, None] * s2[:, None, None, :]) * holds).sum((-2, -1))   # [B,4]
        npair = (rel_logits.softmax(-1) * pairs).sum(-1, keepdim=True)          # [B,1]
        h = (cls + self.obj_proj(obj) + self.rel_proj(torch.cat([xy1, xy2, xy1 - xy2], -1))
             + self.count_proj(bins) + self.count2_proj(bins2)
             + self.pair_proj(torch.cat([npair, 1.0 - torch.exp(-npair)], -1)))
        img_emb = F.normalize(self.img_proj(img.mean(1)), dim=-1)
        txt_emb = F.normalize(self.txt_proj((txt * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)), dim=-1)
        return {"answer_logits": self.answer_head(h), "match_logit": self.match_head(h)[:, 0],
                "loc_logits": loc_logits, "loc2_logits": loc2_logits, "sel_logits": sel_logits,
                "sel2_logits": sel2_logits, "rel_logits": rel_logits,
                "token_boxes": token_boxes,
                "image_embed": img_emb, "text_embed": txt_emb}

    def forward(self, image, tokens):
        """The exported graph: one image and one text in, every head's output out."""
        img = self.encode_image(image)
        txt, valid, bias = self.encode_text(tokens)
        o = self.heads(img, txt, valid, bias)
        p = o["loc_logits"].softmax(-1)               # [B,N]
        box = (p[..., None] * o["token_boxes"]).sum(1)  # [B,4] expected box under the pointer
        outs = (o["answer_logits"], o["match_logit"], box, p.max(-1).values, o["image_embed"], o["text_embed"])
        if self.decoder is not None:  # the caption decoder's memory: describe needs no second image encoder
            outs += (self.decoder.memory(img, o["token_boxes"]),)
        return outs


OUTPUT_NAMES = ("answer_logits", "match_logit", "box", "box_score", "image_embed", "text_embed")
MEMORY_OUTPUT = "describe_memory"
INPUT_NAMES = ("image", "tokens")


def output_names(cfg: Config) -> tuple[str, ...]:
    """The exported graph's outputs: the task heads, then the decoder memory when there is a decoder."""
    return OUTPUT_NAMES + ((MEMORY_OUTPUT,) if cfg.describe_layers else ())


class DescribeStep(nn.Module):
    """Exported describe graph (key/value cache): one token in, next-token logits and the updated cache out."""

    def __init__(self, decoder: CaptionDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, memory, token, pos, past_k, past_v):
        return self.decoder.step(memory, token, pos, past_k, past_v)


class DescribePrefix(nn.Module):
    """Exported describe graph (re-run the prefix): the whole padded prefix in, logits at every position out."""

    def __init__(self, decoder: CaptionDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, memory, tokens):
        return self.decoder(memory, tokens)
