"""The caption decoder (describe graph) of an int8 bundle: quantized in the bundle's form, or carried fp32.

`edge-slim quantize` turns model.onnx into int8 within a budget on the task heads (slimpajama.py); a bundle
with a describe head has a second graph, describe_decoder.onnx, called once per generated token. It is
quantized here with the same form (only the form's steps whose ops the decoder has: its linear layers and
token embedding; LayerNorm, Softmax and the attention products stay fp32 as in model.onnx), calibrated where
the form needs it on the feeds fp32 decoding gives on calibration images (aot/calibration.describe_feeds).

Judged as a user sees it, on held-out scenes (the describe metrics of edge_slim.scenes.caption, and
caption agreement with fp32): the whole int8 bundle (int8 memory from the int8 model.onnx, int8 decoder)
against the fp32 bundle. Over the budget, its most sensitive nodes (logit error with only that node int8) are
kept fp32, 1, 2, 3, 5, 8 at a time; failing that the whole decoder is carried fp32 (the manifest records why);
if even then the drop is over the budget, the int8 memory is the cause and quantize fails (BudgetError).
"""
from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path
from typing import Callable

import onnx

from ...errors import ModelError
from ...runtime import bundle as B
from .calibration import describe_feeds
from .slimpajama import BudgetError, Form, build, candidates, fuse_parallel_linears

METRICS = ("object_precision", "object_recall", "exact_scene")   # the figures the budget applies to
FP32_GRAPH, INT8_GRAPH = "describe_fp32.onnx", "describe_int8.onnx"


def decoder_form(model: onnx.ModelProto, form: Form) -> Form:
    """The form's steps that quantize something in the decoder graph (e.g. no conv stem step)."""
    steps = tuple(s for s in form.steps if candidates(model, Form(form.summary, (s,))))
    return Form(form.summary, steps)


def _describer(work: Path, manifest: dict, model_file: str, graph: str, arithmetic: str | None, threads):
    """(Session on model_file, Describer on graph), both files in `work`, both computed in `arithmetic`
    (None, or ORT's own on this CPU: ONNX Runtime; else the NumPy backend in that arithmetic)."""
    from ...runtime.backends import backend_class
    from ...runtime.describe import Describer
    from ...runtime.session import Session
    from .int8_arith import ort_u8s8_arithmetic
    man = {**manifest, "model_file": model_file, "describe": {**manifest["describe"], "graph": graph},
           "files": {model_file: {}, graph: {}}}
    b = B.Bundle(work, man)
    if arithmetic is None or arithmetic == ort_u8s8_arithmetic():
        return Session(b, backend="ort", threads=threads), Describer(b, backend_class("ort"), threads=threads)
    numpy = functools.partial(backend_class("numpy"), arithmetic=arithmetic)
    return (Session(b, backend="numpy", threads=threads, backend_options={"arithmetic": arithmetic}),
            Describer(b, numpy, threads=threads))


def captions(session, describer, samples: int, seed: int | None = None, renderer: str | None = None) -> list[str]:
    """`describe` texts of held-out scenes (those edge_slim.scenes.caption.evaluate_describe scores)."""
    from ...scenes import renderers as R
    from ...scenes.caption import decode_caption
    from ...scenes.evaluate import DEFAULT_EVAL_SEED, model_image
    seed, renderer = DEFAULT_EVAL_SEED if seed is None else seed, renderer or R.DEFAULT_RENDERER
    out = []
    for i in range(samples):
        x, _ = session.prepare_image(model_image(renderer, R.place(renderer, seed, i)))
        memory = session.backend.run({"image": x, "tokens": session._tokens("object", "match")})
        out.append(decode_caption(describer.tokens(memory[describer.spec["memory_output"]]), describer.vocab))
    return out


def score(texts: list[str], seed: int | None = None, renderer: str | None = None) -> dict:
    from ...scenes import renderers as R
    from ...scenes.caption import score_caption, summarize
    from ...scenes.evaluate import DEFAULT_EVAL_SEED
    seed, renderer = DEFAULT_EVAL_SEED if seed is None else seed, renderer or R.DEFAULT_RENDERER
    return summarize([score_caption(t, R.place(renderer, seed, i)) for i, t in enumerate(texts)])


def drop(fp32: dict, other: dict) -> float:
    return max(fp32[k] - other[k] for k in METRICS)


def agreement(ref: list[str], got: list[str]) -> dict:
    """Captions identical to fp32's, and words equal position by position (over fp32's words)."""
    same = sum(a == b for a, b in zip(ref, got))
    words = sum(len(a.split()) for a in ref)
    equal = sum(x == y for a, b in zip(ref, got) for x, y in zip(a.split(), b.split()))
    return {"identical_captions": round(same / len(ref), 4) if ref else None,
            "word_agreement": round(equal / words, 4) if words else None}


def quantize_describe(src_b: B.Bundle, int8_model: Path, work: Path, form: Form, feeds: list[dict], *,
                      method: str, weight_bits: int, arithmetics: list[str], max_drop: float, samples: int,
                      max_fp32_nodes: int = 8, threads: int | None = None, fuse: bool = False,
                      log: Callable[[str], None] = lambda m: None) -> tuple[Path, dict]:
    """Quantize src_b's describe graph in `form` (int8 model.onnx at `int8_model`, in `work`) within `max_drop`
    of each describe metric: all of it, else with its most sensitive nodes (up to `max_fp32_nodes`) kept fp32,
    else the whole decoder fp32. -> (graph to ship, its record)."""
    m = src_b.manifest
    spec = m["describe"]
    if spec["graph"] not in m["files"]:
        raise ModelError(f"{src_b.path}: the manifest names {spec['graph']} for describe, but the bundle does not "
                         "hold it; re-export the fp32 bundle")
    work = Path(work)
    shutil.copyfile(int8_model, work / "describe-int8-model.onnx")
    shutil.copyfile(src_b.model_path, work / "describe-fp32-model.onnx")
    src = work / FP32_GRAPH
    g, fused = onnx.load(str(src_b.file(spec["graph"]))), 0
    if fuse:
        g, fused = fuse_parallel_linears(g)
    onnx.save(g, str(src))
    F = decoder_form(g, form)
    names = candidates(g, F)
    cand, calib = work / INT8_GRAPH, work / "describe-calib"
    calib.mkdir(exist_ok=True)
    rec: dict = {"form_steps": [s.kind + ":" + "/".join(s.ops) for s in F.steps], "fused_linear_groups": fused,
                 "candidate_nodes": len(names), "eval": {"samples": samples}}
    fp32_s, fp32_d = _describer(work, m, "describe-fp32-model.onnx", FP32_GRAPH, None, threads)
    ref = captions(fp32_s, fp32_d, samples)
    rec["eval"]["fp32"] = fp32 = score(ref)
    dec_feeds: list[dict] = []
    if F.calibrated:
        dec_feeds = describe_feeds(fp32_s, fp32_d, feeds)
        rec["calibration_feeds"] = len(dec_feeds)

    def judged(graph: str, arithmetic: str) -> dict:
        texts = captions(*_describer(work, m, "describe-int8-model.onnx", graph, arithmetic, threads), samples)
        return {**score(texts), **agreement(ref, texts)}

    def trial(kept: list[str]) -> float:
        build(src, cand, F, dec_feeds, method, exclude=kept, cache_dir=calib, weight_bits=weight_bits)
        by = {a: judged(INT8_GRAPH, a) for a in arithmetics}
        rec["eval"]["int8"] = max(by.values(), key=lambda r: drop(fp32, r))
        rec["eval"]["by_arithmetic"], rec["kept_fp32"] = by, list(kept)
        d = drop(fp32, rec["eval"]["int8"])
        rec.setdefault("budget_trials", []).append({"kept_fp32": len(kept), "drop": round(d, 4)})
        log(f"describe: int8 decoder, {len(kept)} of {len(names)} nodes kept fp32, on {samples} held-out scenes: "
            f"drop {d * 100:.2f} points, captions identical to fp32 {rec['eval']['int8']['identical_captions']}")
        return d

    if names:
        d = trial([])
        if d > max_drop and max_fp32_nodes > 0 and not dec_feeds:
            dec_feeds = describe_feeds(fp32_s, fp32_d, feeds)
        if d > max_drop and max_fp32_nodes > 0 and dec_feeds:
            order = sensitivity(src, F, names, dec_feeds, method, calib, weight_bits)
            k = 1
            while d > max_drop and k <= min(max_fp32_nodes, len(order)):
                d = trial(order[:k])
                k = k + 1 if k < 3 else math.ceil(k * 1.5)
        if d <= max_drop:
            kept = rec["kept_fp32"]
            rec.update(precision="int8", drop=round(d, 4), why=f"int8 decoder within the budget ({d * 100:.2f} <= "
                       f"{max_drop * 100:.2f} points of object precision, recall and exact-scene rate)"
                       + (f" with {len(kept)} most sensitive node(s) kept fp32" if kept else ""))
            return cand, rec
    # carried fp32: is the int8 memory (model.onnx) within the budget on its own?
    rec["eval"]["fp32_decoder"] = kept = judged(FP32_GRAPH, arithmetics[0])
    d32 = drop(fp32, kept)
    why = ("the form quantizes nothing in the decoder graph" if not names else
           f"the int8 decoder lost {d * 100:.2f} points of a describe metric even with "
           f"{len(rec.get('kept_fp32', []))} node(s) kept fp32 (budget {max_drop * 100:.2f})")
    if d32 > max_drop:
        raise BudgetError(f"describe loses {d32 * 100:.2f} points of a caption metric with the int8 model.onnx even "
                          f"with the decoder in fp32 ({why}); budget {max_drop * 100:.2f} points; nothing written")
    rec.update(precision="fp32", drop=round(d32, 4), kept_fp32=[], why=f"{why}: the decoder is carried fp32 "
               f"(drop {d32 * 100:.2f} points with it)")
    log(f"describe: decoder carried fp32 ({rec['why']})")
    return src, rec


def sensitivity(src: Path, form: Form, names: list[str], feeds: list[dict], method: str, work: Path,
                weight_bits: int) -> list[str]:
    """Decoder nodes, most sensitive first: the next-token logits' mean squared error vs fp32 (over fp32's
    variance) on the decoding feeds, with only that node int8."""
    import numpy as np
    import onnxruntime as ort

    def logits(path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return np.stack([sess.run(["logits"], f)[0] for f in feeds])

    ref = logits(src)
    err = {}
    for n in names:
        one = build(src, work / "describe-sens.onnx", form, feeds, method, only=[n], cache_dir=work,
                    weight_bits=weight_bits)
        err[n] = float(np.mean((logits(one) - ref) ** 2) / (ref.var() + 1e-12))
    return sorted(names, key=lambda n: -err[n])
