"""int8 quantization of any ONNX model (`edge-slim quantize MODEL.onnx --calib DATA`), within a budget.

    MODEL.onnx + DATA (images with a stated --preprocess spec, or .npz/.npy input tensors)
        -> samples, split: the first 3/4 calibrate, the last 1/4 (at least one) are held out
        -> int8 graph in one of slimpajama.py's FORMS (the same forms, `build` and `candidates` as SlimPajama)
        -> fp32 and int8 run on the held-out samples: per output cosine and max abs error, and for a
           classifier (one 2-D [N, classes] output) top-1 agreement
        -> the budget (quantize.fit_budget): while the drop exceeds --max-accuracy-drop, the most sensitive
           nodes (error with only that node int8, on calibration samples) are kept in fp32
        -> a bundle (model.onnx + manifest with the report), written atomically; nothing when it cannot fit

The drop's metric is stated in the report and in every message: `top1` (1 - top-1 agreement) for a
classifier, else `cosine` (1 - the mean output cosine of the worst output). A model's own accuracy is
not known here (no labels), so agreement with fp32 is what is budgeted.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import BadInputError, ModelError
from ...runtime import bundle as B
from . import slimpajama as Q

SENSITIVITY_SAMPLES = 16
# SlimPajama's default form keeps convs with < 8 input channels per group fp32 (its RGB stem); in the
# mobile convnets people bring, that rule also catches every depthwise conv (1 channel per group): the
# OCR direction classifier came out 0.46x fp32 with it, 0.38x with every conv int8. So: every conv as
# static uint8 QLinearConv, MatMul/Gemm as dynamic int8 (the per-op choice of SlimPajama's forms).
DEFAULT_FORM = "dynamic-qconv"
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


# ---------------------------------------------------------------- calibration data
def model_inputs(model) -> list[dict]:
    """The graph inputs that are not initializers: name, shape (ints; None where dynamic) and numpy dtype."""
    init = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in init:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        out.append({"name": i.name, "shape": dims, "dtype": DTYPES.get(tt.elem_type, np.float32)})
    return out


def load_samples(data, inputs: list[dict], preprocess: dict | None = None) -> list[dict]:
    """DATA -> one feed dict per sample.

    - a folder of images (and/or .npz/.npy files), read in name order;
    - an .npz file: arrays named after the inputs, each one sample (the input's rank) or a stack of samples
      (one more leading axis); where the input's first (batch) axis is dynamic, an array of the input's
      rank is a stack of samples of batch 1;
    - an .npy file: the same, for a model with one input.
    Images need the --preprocess spec (size, normalization) and a model with one image input.
    """
    from ...vision.spec import image_tensor, is_image_file
    p = Path(data)
    if not p.exists():
        raise BadInputError(f"calibration data not found: {p}")
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    samples: list[dict] = []
    for f in files:
        if is_image_file(f):
            if preprocess is None:
                raise BadInputError(f"{f} is an image: pass --preprocess 'size=HxW mean=... std=...' to say how the "
                                    "model wants it (see edge_slim/vision/spec.py)")
            if len(inputs) != 1:
                raise BadInputError(f"{f}: images calibrate a model with one input; this one takes "
                                    f"{', '.join(i['name'] for i in inputs)} (give .npz files)")
            samples.append({inputs[0]["name"]: image_tensor(f, preprocess).astype(inputs[0]["dtype"])})
        elif f.suffix in (".npz", ".npy"):
            samples += _arrays(f, inputs)
        elif not p.is_dir():
            raise BadInputError(f"{f}: calibration data is a folder of images, or .npz/.npy files of input tensors")
    if len(samples) < 2:
        raise BadInputError(f"{p}: {len(samples)} calibration sample(s); at least 2 are needed (some are held out "
                            "to check the int8 model against fp32)")
    return samples


def _arrays(f: Path, inputs: list[dict]) -> list[dict]:
    try:
        z = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{f}: not a readable .npz/.npy file ({e})") from None
    if isinstance(z, np.ndarray):
        if len(inputs) != 1:
            raise BadInputError(f"{f}: an .npy file feeds a model with one input; this one takes "
                                f"{', '.join(i['name'] for i in inputs)} (use .npz with one array per input)")
        arrays = {inputs[0]["name"]: z}
    else:
        with z:
            arrays = {k: z[k] for k in z.files}
    missing = [i["name"] for i in inputs if i["name"] not in arrays]
    if missing:
        raise BadInputError(f"{f} has no array for input(s) {', '.join(missing)} (it has {', '.join(arrays) or 'none'})")
    counts = set()
    stacks = {}
    for spec in inputs:
        a = arrays[spec["name"]]
        rank = len(spec["shape"])
        if a.ndim == rank and rank and spec["shape"][0] is None:
            a = a[:, None]          # a dynamic batch axis: each row is one sample of batch 1
        elif a.ndim == rank:
            a = a[None]
        elif a.ndim != rank + 1:
            raise BadInputError(f"{f}: {spec['name']} has shape {list(a.shape)}; the input has rank {rank} "
                                f"({spec['shape']}), or give a stack of samples with one more leading axis")
        if any(d is not None and d != s for d, s in zip(spec["shape"], a.shape[1:])):
            raise BadInputError(f"{f}: {spec['name']} has shape {list(a.shape[1:])}; the model takes {spec['shape']}")
        stacks[spec["name"]] = a.astype(spec["dtype"])
        counts.add(a.shape[0])
    if len(counts) != 1:
        raise BadInputError(f"{f}: the inputs hold different numbers of samples ({sorted(counts)})")
    return [{k: np.ascontiguousarray(v[j]) for k, v in stacks.items()} for j in range(counts.pop())]


# ---------------------------------------------------------------- fp32 vs int8
def _run(model_file: Path, feeds: list[dict], threads: int | None) -> list[list[np.ndarray]]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        return [sess.run(None, f) for f in feeds]
    except Exception as e:  # noqa: BLE001 - ORT raises its own types for bad feeds
        raise BadInputError(f"ONNX Runtime cannot run {model_file.name} on the calibration data: "
                            f"{str(e).strip().splitlines()[0]}") from None


def is_classifier(model) -> bool:
    """One output of rank 2 with more than one class: top-1 agreement is the metric."""
    outs = list(model.graph.output)
    if len(outs) != 1:
        return False
    dims = outs[0].type.tensor_type.shape.dim
    return len(dims) == 2 and (not dims[1].HasField("dim_value") or dims[1].dim_value > 1)


def compare(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], names: list[str], classifier: bool) -> dict:
    """Agreement of `got` with `ref` over samples: per output mean/min cosine and max abs error; top-1."""
    per = {}
    for j, name in enumerate(names):
        cos, err = [], 0.0
        for r, g in zip(ref, got):
            a, b = r[j].astype(np.float64).ravel(), g[j].astype(np.float64).ravel()
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            cos.append(1.0 if na == nb == 0 else float(a @ b / max(na * nb, 1e-30)))
            err = max(err, float(np.abs(a - b).max()) if a.size else 0.0)
        per[name] = {"cosine_mean": round(float(np.mean(cos)), 6), "cosine_min": round(float(np.min(cos)), 6),
                     "max_abs_error": float(f"{err:.4g}")}
    out = {"samples": len(ref), "outputs": per, "cosine": min(v["cosine_mean"] for v in per.values())}
    if classifier:
        agree = [int(np.argmax(r[0], -1).ravel().tolist() == np.argmax(g[0], -1).ravel().tolist())
                 for r, g in zip(ref, got)]
        out["top1_agreement"] = round(float(np.mean(agree)), 4)
    return out


def _normalize(m):
    """What ONNX Runtime's quantizers need to see a weight: weights as initializers, not Constant nodes (as
    Paddle exports them), folded where they are computed from constants; BatchNormalization folded into
    its Conv (ONNX Runtime's basic, semantics-preserving optimizer: one int8 weight instead of an int8 weight
    and four fp32 vectors); and every node named (the fp32 fallbacks are given by node name)."""
    from ..lower.onnx_rewrites import fold, ort_basic_optimize
    fold(m)
    try:
        m = ort_basic_optimize(m)
    except Exception as e:  # noqa: BLE001 - ORT raises its own types
        raise ModelError(f"ONNX Runtime cannot load the model: {str(e).strip().splitlines()[0]}") from None
    seen: set[str] = set()
    for k, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{k}"
        seen.add(n.name)
    return m


def drop_of(scores: dict, metric: str) -> float:
    return 1.0 - (scores["top1_agreement"] if metric == "top1" else scores["cosine"])


def _headline(value: float) -> dict:
    """quantize.fit_budget judges a drop over SlimPajama's three headline metrics (quantize.HEADLINE);
    an own model has one agreement figure, so each headline key carries it."""
    return {k: value for k in Q.HEADLINE}


# ---------------------------------------------------------------- the driver
def quantize_onnx(model, out=None, *, calib, preprocess: dict | None = None, form: str = DEFAULT_FORM,
                  method: str = "minmax", max_drop: float = 0.01, max_fp32_nodes: int = 16,
                  threads: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Quantize the fp32 ONNX file `model` into an int8 bundle at `out` (default `<stem>-int8` beside it),
    checked against fp32 on held-out calibration samples. Raises quantize.BudgetError (exit 5, nothing
    written) when the drop cannot be brought within `max_drop`."""
    import onnx
    if form not in Q.FORMS:
        raise BadInputError(f"unknown form {form!r}; choose from {', '.join(Q.FORMS)}")
    if method not in Q.METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; choose from {', '.join(Q.METHODS)}")
    src_path = Path(model)
    if not src_path.is_file():
        raise ModelError(f"model not found: {src_path}")
    try:
        m = onnx.load(str(src_path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise ModelError(f"{src_path}: not a readable ONNX model ({e})") from None
    if any(n.op_type in ("DequantizeLinear", "QLinearConv", "MatMulInteger", "DynamicQuantizeLinear") for n in m.graph.node):
        raise ModelError(f"{src_path} is already quantized; quantize takes an fp32 graph")
    m = _normalize(m)
    out = Path(out) if out is not None else src_path.with_name(f"{src_path.stem}-int8")
    inputs = model_inputs(m)
    samples = load_samples(calib, inputs, preprocess)
    n_held = max(1, len(samples) // 4)
    calib_feeds, held = samples[:-n_held], samples[-n_held:]
    classifier = is_classifier(m)
    metric = "top1" if classifier else "cosine"
    names = [o.name for o in m.graph.output]
    F, t0 = Q.FORMS[form], time.time()
    log(f"int8 {form} ({F.summary}): {src_path} -> {out}; {len(calib_feeds)} calibration + {n_held} held-out "
        f"samples from {calib}; budget: {metric} drop <= {max_drop} ({'1 - top-1 agreement' if classifier else '1 - mean output cosine'}), "
        f"<= {max_fp32_nodes} fp32 nodes")
    with tempfile.TemporaryDirectory(prefix="edge-slim-quantize-any-") as tmp:
        work = Path(tmp)
        src = work / "fp32.onnx"
        onnx.save(Q.strip_debug_info(m), str(src))
        ref = _run(src, held, threads)
        cand = work / "int8.onnx"
        results: dict[tuple, dict] = {}

        def try_excluding(excl):
            Q.build(src, cand, F, calib_feeds, method, exclude=excl, cache_dir=work)
            results[tuple(excl)] = compare(ref, _run(cand, held, threads), names, classifier)
            return _headline(1.0 - drop_of(results[tuple(excl)], metric))

        sens: dict[str, float] = {}
        nodes = Q.candidates(onnx.load(str(src)), F)

        def rank():
            probe = calib_feeds[:SENSITIVITY_SAMPLES]
            log(f"measuring the sensitivity of {len(nodes)} nodes on {len(probe)} calibration samples")
            probe_ref = _run(src, probe, threads)
            for name in nodes:
                f = Q.build(src, work / "sens.onnx", F, calib_feeds, method, only=[name], cache_dir=work)
                sens[name] = 1.0 - compare(probe_ref, _run(f, probe, threads), names, False)["cosine"]
            return sorted(nodes, key=lambda n: -sens[n])

        try:
            k, order, _, trials = Q.fit_budget(_headline(1.0), try_excluding, rank, max_drop, max_fp32_nodes, log)
        except Q.BudgetError as e:
            raise Q.BudgetError(f"{metric} drop vs fp32 on {n_held} held-out samples: {e}") from None
        kept = order[:k]
        Q.build(src, cand, F, calib_feeds, method, exclude=kept, cache_dir=work)
        onnx.save(compact_names(onnx.load(str(cand))), str(cand))
        scores = compare(ref, _run(cand, held, threads), names, classifier)
        fp32_bytes, int8_bytes = src_path.stat().st_size, cand.stat().st_size
        report = {"form": form, "summary": F.summary, "method": method if F.calibrated else "none (dynamic)",
                  "weight_bits": Q.DEFAULT_WEIGHT_BITS,
                  "calibration": {"data": str(calib), "samples": len(calib_feeds), "held_out": n_held,
                                  "preprocess": preprocess},
                  "metric": metric, "max_accuracy_drop": max_drop, "drop": round(drop_of(scores, metric), 6),
                  "agreement": scores, "size": {"fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes,
                                                "ratio": round(int8_bytes / fp32_bytes, 4)},
                  "candidate_nodes": len(nodes), "quantized_nodes": len(nodes) - len(kept), "kept_fp32": kept,
                  "kept_fp32_why": {n: f"sensitivity rank {i + 1} of {len(nodes)} (1 - cosine {sens[n]:.3g} with only "
                                       "this node int8)" for i, n in enumerate(kept)},
                  "budget_trials": [{**t, "metric": metric} for t in trials],
                  "quantized_from": {"file": src_path.name, "sha256": B.sha256_file(src_path)},
                  "seconds": round(time.time() - t0, 1)}
        _write_bundle(out, cand, src_path, inputs, names, m, preprocess, report)
    log(f"wrote {out}: int8 {int8_bytes / 1e6:.2f} MB ({report['size']['ratio']:.3f} x fp32), {metric} drop "
        f"{report['drop']:.4f}, {len(kept)} node(s) kept in fp32")
    return {"bundle": str(out), **report}


def compact_names(m):
    """The model with short tensor names ("t1f") and no node names; the graph's inputs and outputs keep
    theirs. In a quantized model of a few hundred kB the exporter's and the quantizer's names
    ("/backbone/conv1/Conv_output_0_quantized_scale") are 5-7 % of the file. Inference reads none of them
    (the report's kept_fp32 names the nodes of the fp32 source). Left as it is when a node holds a subgraph,
    whose names may refer to the outer graph."""
    g = m.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in g.node for a in n.attribute):
        return m
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    short: dict[str, str] = {}

    def name(t: str) -> str:
        if not t or t in keep:
            return t
        return short.setdefault(t, f"t{len(short):x}")
    for t in g.initializer:
        t.name = name(t.name)
    for n in g.node:
        n.name = ""
        n.input[:] = [name(t) for t in n.input]
        n.output[:] = [name(t) for t in n.output]
    del g.value_info[:]
    return m


def _write_bundle(out: Path, model_file: Path, src: Path, inputs, output_names, m, preprocess, report) -> None:
    import onnxruntime
    from ..lower.onnx_rewrites import ONNX_DTYPES
    outs = []
    for o in m.graph.output:
        tt = o.type.tensor_type
        outs.append({"name": o.name, "dtype": ONNX_DTYPES.get(tt.elem_type, "float32"),
                     "shape": [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                               for d in tt.shape.dim]})
    ins = [{"name": i["name"], "shape": i["shape"], "dtype": np.dtype(i["dtype"]).name} for i in inputs]
    with B.staging_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(model_file.read_bytes())
        B.write_manifest(tmp, {"schema": B.SCHEMA_VERSION, "name": f"{src.stem}-int8", "format": "onnx",
                               "precision": "int8", "model_file": "model.onnx", "config": None, "inputs": ins,
                               "outputs": outs, "tokenizer": None, "answers": None, "preprocess": preprocess,
                               "eval": {}, "quantization": report,
                               "toolchain": {"onnxruntime": onnxruntime.__version__}})


def summary(r: dict) -> str:
    """The report as the CLI prints it: form, size, the budgeted metric, then each output's agreement."""
    a = r["agreement"]
    lines = [f"{r['bundle']}  ({r['form']}, {r['size']['ratio']:.3f} x fp32 size, {r['metric']} drop {r['drop']:.4f} "
             f"<= {r['max_accuracy_drop']}, {len(r['kept_fp32'])} node(s) kept in fp32; {a['samples']} held-out samples)"]
    if "top1_agreement" in a:
        lines.append(f"  top-1 agreement with fp32: {a['top1_agreement']:.4f}")
    lines += [f"  {name}: cosine mean {v['cosine_mean']:.6f} min {v['cosine_min']:.6f}, max abs error {v['max_abs_error']:.4g}"
              for name, v in a["outputs"].items()]
    return "\n".join(lines)
