"""Training data: generated scenes rendered once into an in-memory cache, tasks pre-tokenized.

Rendering is done ahead in worker processes so the training step never waits on
Pillow; each scene carries several questions, referring expressions and true/false
captions, and every step draws fresh combinations from them.
"""
from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from ...scenes import generate as G
from ...scenes import renderers as R
from ...scenes.caption import caption, encode_caption
from ...scenes.grammar import ANSWERS, COLORS, FAMILIES, SHAPES, SIZES
from ...scenes.render import render
from ...text.tokenizer import Tokenizer
from ...vision.preprocess import IMAGE_SIZE, load_image

FAMILY_WEIGHTS = {"color": 1.0, "shape": 1.0, "size": 0.7, "count": 1.6, "exists": 1.0, "spatial": 1.6}
NQ, NR, NC = 12, 3, 3  # questions, referring expressions, captions (true and false each) per scene


@dataclass
class Cache:
    images: np.ndarray    # uint8 [N,96,96,3]
    q_tok: np.ndarray     # int64 [N,NQ,L]
    q_ans: np.ndarray     # int64 [N,NQ]
    q_fam: np.ndarray     # int64 [N,NQ]
    r_tok: np.ndarray     # int64 [N,NR,L]
    r_box: np.ndarray     # float32 [N,NR,4] in [0,1]
    r_cell: np.ndarray    # int64 [N,NR]
    c_true: np.ndarray    # int64 [N,NC,L]
    c_false: np.ndarray   # int64 [N,NC,L]
    cells: np.ndarray     # int64 [N,36,3] (color+1, shape+1, size+1), 0 = no object centre
    cell_box: np.ndarray  # float32 [N,36,4]
    # the reference caption (edge_slim.scenes.caption) [bos ... eos pad...]; None in caches built
    # before captions existed (train refuses those for a model with a caption decoder)
    cap_tok: np.ndarray | None = None  # int64 [N,caption.MAX_TOKENS]

    def __len__(self):
        return len(self.images)


def cell_of(o: dict, grid: int = G.GRID) -> int:
    return int(o["y"] // G.CELL) * grid + int(o["x"] // G.CELL)


def make_tokenizer(max_len: int) -> Tokenizer:
    from ...scenes.grammar import SYNONYMS, vocabulary
    return Tokenizer(vocabulary(), max_len, SYNONYMS)


def pick_renderer(seed: int, i: int, mix: dict[str, float]) -> str:
    """The renderer of training scene i: drawn from the mix, seeded by the scene (so a cache is reproducible)."""
    if len(mix) == 1:
        return next(iter(mix))
    names = sorted(mix)
    return names[int(np.random.default_rng([seed, i, 11]).choice(len(names), p=[mix[n] for n in names]))]


def mix_tag(renderers: dict[str, float] | str | None) -> str:
    """A cache-file suffix naming a renderer mix ('' for flat only, so today's caches keep their names)."""
    mix = R.parse_mix(renderers or {"flat": 1.0})
    return "" if mix == {"flat": 1.0} else "-" + "-".join(f"{k}{v:.2f}" for k, v in sorted(mix.items()))


def _scene_arrays(seed: int, i: int, tok: Tokenizer, mix: dict[str, float] | None = None) -> dict:
    name = pick_renderer(seed, i, mix or {"flat": 1.0})
    scene = R.place(name, seed, i)  # the flat renderer's is generate.sample_scene(seed, i)
    rng = np.random.default_rng([seed, i, 7])
    hi_res = rng.random() < 0.3  # some flat scenes rendered at 2x and resized, as user images are
    img = render(scene, 2 * IMAGE_SIZE if hi_res else IMAGE_SIZE) if name == "flat" else R.draw(name, scene)
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):  # other renderers draw 160-512 px images: preprocess them
        img = load_image(img).resize((IMAGE_SIZE, IMAGE_SIZE), resample=2)  # Image.BILINEAR, as preprocess does
    fams = list(FAMILY_WEIGHTS)
    w = np.array([FAMILY_WEIGHTS[f] for f in fams])
    w /= w.sum()
    qs = []
    while len(qs) < NQ:
        q = G.question(scene, fams[rng.choice(len(fams), p=w)], rng)
        if q is not None:
            qs.append(q)
    refs = [G.referring(scene, rng) for _ in range(NR)]
    trues = [G.true_caption(scene, rng) for _ in range(NC)]
    falses = []
    while len(falses) < NC:
        f = G.false_caption(scene, rng, base=trues[len(falses)] if rng.random() < 0.5 else None)
        if f is not None:
            falses.append(f)
    cells = np.zeros((36, 3), np.int64)
    cell_box = np.zeros((36, 4), np.float32)
    for o in scene["objects"]:
        c = cell_of(o)
        cells[c] = (list(COLORS).index(o["color"]) + 1, SHAPES.index(o["shape"]) + 1, SIZES.index(o["size"]) + 1)
        cell_box[c] = np.array(o["box"]) / 96.0
    return dict(
        images=np.asarray(img, np.uint8),
        q_tok=np.stack([tok.encode(q["text"], "ask") for q in qs]),
        q_ans=np.array([ANSWERS.index(q["answer"]) for q in qs]),
        q_fam=np.array([FAMILIES.index(q["family"]) for q in qs]),
        r_tok=np.stack([tok.encode(r["text"], "locate") for r in refs]),
        r_box=np.array([r["box"] for r in refs], np.float32) / 96.0,
        r_cell=np.array([cell_of(scene["objects"][r["target"]]) for r in refs]),
        c_true=np.stack([tok.encode(c["text"], "match") for c in trues]),
        c_false=np.stack([tok.encode(c["text"], "match") for c in falses]),
        cells=cells, cell_box=cell_box, cap_tok=encode_caption(caption(scene)))


def _chunk(args):
    seed, start, stop, max_len, mix = args
    tok = make_tokenizer(max_len)
    rows = [_scene_arrays(seed, i, tok, mix) for i in range(start, stop)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _one_blas_thread() -> None:
    """Pool initializer: one OpenBLAS thread in each forked worker. Forked workers inherit NumPy's
    OpenBLAS pool, whose spinning threads oversubscribe the cores (the ray caster ran 1.5-2.5x
    slower in 2 workers on 2 cores). Best effort: a NumPy without OpenBLAS is left as it is."""
    import ctypes
    try:
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line and ".so" in line}
    except OSError:
        return
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(1)
                break


def build_cache(n: int, seed: int = 0, max_len: int = 16, workers: int = 2, progress=None,
                renderers: dict[str, float] | str | None = None) -> Cache:
    """Render n training scenes. renderers: a mix such as {"flat": 0.2, "varied2d": 0.4, "raycast": 0.4}
    (scenes/renderers.parse_mix; default: flat only, today's recipe)."""
    mix = R.parse_mix(renderers or {"flat": 1.0})
    step = 500
    jobs = [(seed, s, min(n, s + step), max_len, mix) for s in range(0, n, step)]
    parts = []
    with mp.get_context("fork").Pool(workers, initializer=_one_blas_thread) as pool:
        for part in pool.imap(_chunk, jobs):
            parts.append(part)
            if progress:
                progress(len(part["images"]))
    return Cache(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def save_cache(cache: Cache, path) -> None:
    import os
    tmp = str(path) + ".tmp.npz"
    np.savez(tmp, **{k: v for k, v in cache.__dict__.items() if v is not None})
    os.replace(tmp, path)


def load_cache(path) -> Cache:
    with np.load(path) as z:
        return Cache(**{k: z[k] for k in z.files})
