"""Post-training int8 quantization of a SlimPajama ONNX bundle, within a task-accuracy budget.

    fp32 bundle -> calibration feeds (generated scenes of seed 2, or a user's folder)
                -> int8 graph in one FORM (ONNX Runtime's quantizers + a weight-only pass of ours)
                -> fp32 and int8 evaluated on the same held-out scenes (seed 1)
                -> while the drop exceeds the budget: keep the most sensitive nodes in fp32
                -> bundle with a `quantization` report in its manifest, written atomically

Only nodes with a constant weight are ever quantized (conv, linear layers, the token
embedding); LayerNorm, Softmax, GELU and the attention score/value products stay fp32
in every form: their int8 versions were slower or lost accuracy (shared/notes/tvm-facts.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import BadInputError, EdgeSlimError, ModelError
from ...runtime import bundle as B
from .calibration import CALIB_SEED, FeedReader, folder_feeds, scene_feeds
from .int8_arith import check_arithmetics, integer_form, may_saturate  # noqa: F401 (may_saturate: API)

HEADLINE = ("vqa_accuracy", "match_r1", "locate_iou50")  # the metrics the budget applies to
SENSITIVITY_FEEDS = 96
FP32_BY_DESIGN = ("LayerNormalization, Softmax, GELU, reductions, and the attention score/value MatMuls "
                  "(both inputs are activations) stay fp32 in every form; -rgb32 forms also keep the conv on the "
                  "3-channel image fp32 (faster than its int8 kernel)")


class BudgetError(EdgeSlimError):
    """The int8 model cannot meet the accuracy budget within the allowed fp32 fallbacks."""
    exit_code = 5


# -- forms: ordered steps; static steps come first, as they calibrate on the fp32 graph ---------
@dataclass(frozen=True)
class Step:
    kind: str                     # "static" (calibrated), "dynamic" (activations quantized per call), "weights"
    ops: tuple[str, ...]
    qformat: str = "qdq"          # static only: "qdq" (Q/DQ pairs) or "qop" (QLinearConv/QLinearMatMul)
    activation: str = "u8"        # static only: "u8" or "s8"
    min_in_channels: int = 1      # convs reading fewer channels stay fp32 in this step (see FIRST_CONV_FP32)
    per_channel: bool = True      # one weight scale per output channel, else one per tensor (see the -pt form)


@dataclass(frozen=True)
class Form:
    summary: str
    steps: tuple[Step, ...]

    @property
    def calibrated(self) -> bool:
        return any(s.kind == "static" for s in self.steps)


LINEAR = ("MatMul", "Gemm", "Gather")
# The first conv reads the 3 RGB channels: its uint8 GEMM has K = 27 per output pixel, and quantizing and
# NHWC-reordering the full 96x96 image costs more than the int8 kernel saves. Keeping it fp32 took the model from
# 0.76-0.78 to 0.71-0.73 x fp32 p50 (benchmarks/quantize_forms.py, Xeon family 6 model 207, 1 thread).
FIRST_CONV_FP32 = 8

# Per-tensor weight scales on the dynamic linears: ORT's int8 MatMul then skips its per-column rescale;
# 0.67-0.70 vs 0.71-0.73 x fp32 p50 in the same runs; output error 0.0014 vs 0.0010, same answers (1,000 scenes).
FORMS: dict[str, Form] = {
    "dynamic-pt-rgb32": Form("dynamic int8 MatMul/Gemm/Gather with per-tensor weight scales + static uint8 "
                             "QLinearConv stem, RGB input conv fp32",
                             (Step("static", ("Conv",), "qop", "u8", FIRST_CONV_FP32),
                              Step("dynamic", LINEAR, per_channel=False))),
    "dynamic-qconv-rgb32": Form("dynamic int8 MatMul/Gemm/Gather + static uint8 QLinearConv stem, RGB input conv fp32",
                                (Step("static", ("Conv",), "qop", "u8", FIRST_CONV_FP32), Step("dynamic", LINEAR))),
    "dynamic-qconv": Form("dynamic int8 MatMul/Gemm/Gather + static uint8 QLinearConv stem",
                          (Step("static", ("Conv",), "qop", "u8"), Step("dynamic", LINEAR))),
    "dynamic-wconv": Form("dynamic int8 MatMul/Gemm/Gather + int8 weight-only conv stem (fp32 compute)",
                          (Step("weights", ("Conv",)), Step("dynamic", LINEAR))),
    "dynamic": Form("dynamic int8 MatMul/Gemm/Gather, fp32 conv stem", (Step("dynamic", LINEAR),)),
    "dynamic-conv": Form("dynamic int8 everywhere, conv as ConvInteger", (Step("dynamic", ("Conv", *LINEAR)),)),
    "static-qdq-u8": Form("static QDQ, uint8 activations, per-channel int8 weights",
                          (Step("static", ("Conv", *LINEAR), "qdq", "u8"),)),
    "static-qdq-s8": Form("static QDQ, int8 activations, per-channel int8 weights",
                          (Step("static", ("Conv", *LINEAR), "qdq", "s8"),)),
    "static-qop-u8": Form("static QOperator (QLinearConv/QLinearMatMul), uint8 activations",
                          (Step("static", ("Conv", *LINEAR), "qop", "u8"),)),
    "weight-only": Form("int8 weights dequantized in the graph, fp32 compute", (Step("weights", ("Conv", *LINEAR)),)),
}
DEFAULT_FORM = "dynamic-pt-rgb32"
METHODS = ("minmax", "entropy", "percentile")
# Weights of the integer steps in 7 bits ([-64, 64], ORT's reduce_range) or 8 ([-127, 127]). With 8, a pair of
# uint8 x int8 products can overflow the int16 that ONNX Runtime's AVX2 kernels (x86 without VNNI) sum it in,
# and the bundle answers differently there than everywhere else (docs/quantize.md, aot/quantize/int8_arith.py).
WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
def _weight_slot(node, inits) -> tuple[int, int] | None:
    """(input index, channel axis) of the node's constant weight, or None if it has none."""
    slot = {"Conv": (1, 0), "MatMul": (1, 1), "Gather": (0, 0)}.get(node.op_type)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        slot = (1, 0 if trans_b else 1)
    if slot is None or len(node.input) <= slot[0] or node.input[slot[0]] not in inits:
        return None
    if node.op_type == "MatMul" and len(inits[node.input[1]].dims) != 2:
        return None
    return slot


def candidates(model: onnx.ModelProto, form: Form) -> list[str]:
    """Names of the nodes the form quantizes (those the budget loop may keep in fp32)."""
    inits = {i.name: i for i in model.graph.initializer}
    ruled = [fp32_by_rule(model, s) for s in form.steps]
    return [n.name for n in model.graph.node if _weight_slot(n, inits) is not None
            and any(n.op_type in s.ops and n.name not in r for s, r in zip(form.steps, ruled))]


def fp32_by_rule(model: onnx.ModelProto, step: Step) -> set[str]:
    """Nodes a step leaves in fp32 by its own rule (convs with fewer than step.min_in_channels inputs)."""
    if step.min_in_channels <= 1 or "Conv" not in step.ops:
        return set()
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits
            and inits[n.input[1]].dims[1] < step.min_in_channels}


def quantize_weights(model: onnx.ModelProto, ops, nodes: set[str] | None = None,
                     exclude: set[str] = frozenset()) -> onnx.ModelProto:
    """Weight-only int8: each constant weight becomes symmetric per-channel int8 + DequantizeLinear."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            users[x] = users.get(x, 0) + 1
    done: dict[tuple[str, int], str] = {}
    dq_nodes, drop = [], set()
    for n in g.node:
        slot = _weight_slot(n, inits) if n.op_type in ops else None
        if slot is None or n.name in exclude or (nodes is not None and n.name not in nodes):
            continue
        idx, axis = slot
        name = n.input[idx]
        if (name, axis) not in done:
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            red = tuple(a for a in range(w.ndim) if a != axis)
            scale = np.abs(w).max(axis=red) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            base = f"{name}_w8a{axis}"
            g.initializer.extend([numpy_helper.from_array(q, base + "_q"), numpy_helper.from_array(scale, base + "_s"),
                                  numpy_helper.from_array(np.zeros_like(scale, np.int8), base + "_z")])
            dq_nodes.append(helper.make_node("DequantizeLinear", [base + "_q", base + "_s", base + "_z"], [base],
                                             name=base + "_DequantizeLinear", axis=axis))
            done[(name, axis)] = base
        n.input[idx] = done[(name, axis)]
        users[name] -= 1
        if users[name] == 0 and name not in {o.name for o in g.output}:
            drop.add(name)
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes_all = dq_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes_all)
    return model


def fuse_parallel_linears(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Linear layers that read the same tensor (q/k/v; cross-attention k/v; loc_k + box_head) become one
    MatMul over concatenated weights + one bias Add + Split: the same function (outputs equal to ~1e-6)
    with fewer, wider kernels and, in dynamic int8, one activation quantization instead of three.
    -> (model, number of groups fused)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)

    def linear(n):  # MatMul(x, W) -> Add(bias) with constant 2-D W and 1-D bias of W's width
        if n.op_type != "MatMul" or n.input[1] not in inits or len(inits[n.input[1]].dims) != 2:
            return None
        adds = consumers.get(n.output[0], [])
        if len(adds) != 1 or adds[0].op_type != "Add":
            return None
        b = [x for x in adds[0].input if x != n.output[0]]
        if len(b) != 1 or b[0] not in inits or list(inits[b[0]].dims) != [inits[n.input[1]].dims[1]]:
            return None
        return n, adds[0], b[0]

    drop, new, fused = set(), {}, 0
    for x, cs in consumers.items():
        group = [lin for lin in (linear(c) for c in cs if c.input[0] == x) if lin is not None]
        if len(group) < 2:
            continue
        ws = [numpy_helper.to_array(inits[n.input[1]]) for n, _, _ in group]
        bs = [numpy_helper.to_array(inits[b]) for _, _, b in group]
        base = _group_name([module_of(n) or n.name or n.output[0] for n, _, _ in group])
        w, b, sp = base + ".weight", base + ".bias", base + ".split"
        g.initializer.extend([numpy_helper.from_array(np.concatenate(ws, 1), w), numpy_helper.from_array(np.concatenate(bs), b),
                              numpy_helper.from_array(np.array([a.shape[1] for a in ws], np.int64), sp)])
        new[id(group[0][0])] = [helper.make_node("MatMul", [x, w], [base + "/MatMul_output_0"], name=base + "/MatMul"),
                                helper.make_node("Add", [base + "/MatMul_output_0", b], [base + "/Add_output_0"], name=base + "/Add"),
                                helper.make_node("Split", [base + "/Add_output_0", sp], [a.output[0] for _, a, _ in group],
                                                 name=base + "/Split", axis=-1)]
        drop.update(id(n) for lin in group for n in lin[:2])
        fused += 1
    nodes = [m for n in g.node for m in (new.get(id(n), []) if id(n) in drop else [n])]
    del g.node[:]
    g.node.extend(nodes)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model, fused


def module_of(node) -> str:
    """The PyTorch module a node came from ('img_blocks.0.attn.q'), from the exporter's metadata, or ''."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(p.value.replace("'", '"'))
            except json.JSONDecodeError:
                return ""
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def _group_name(names: list[str]) -> str:
    """'img_blocks.0.attn.q', 'img_blocks.0.attn.k' -> 'img_blocks.0.attn.q+k' ('/' paths likewise)."""
    sep = "/" if any("/" in n for n in names) else "."
    parts = [n.split(sep) for n in names]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    return sep.join(parts[0][:head] + ["+".join(sep.join(p[head:]) for p in parts)])


def build(src: Path, dst: Path, form: Form, feeds: list[dict] | None, method: str = "minmax",
          exclude=(), only=None, cache_dir: Path | None = None, weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    """Quantize the fp32 ONNX file `src` into `dst` in `form`, leaving `exclude` nodes in fp32.

    `only` (a list of node names) quantizes just those nodes (used for sensitivity);
    calibration ranges are cached per step in `cache_dir` so repeated builds skip calibration;
    `weight_bits` 7 keeps integer-step weights in [-64, 64] (exact on every CPU), 8 in [-127, 127].
    """
    if weight_bits not in WEIGHT_BITS:
        raise BadInputError(f"weight bits must be one of {', '.join(map(str, WEIGHT_BITS))}, not {weight_bits}")
    import onnxruntime.quantization as Q
    qt = {"u8": Q.QuantType.QUInt8, "s8": Q.QuantType.QInt8}
    calib = {"minmax": Q.CalibrationMethod.MinMax, "entropy": Q.CalibrationMethod.Entropy,
             "percentile": Q.CalibrationMethod.Percentile}[method]
    exclude, only = list(exclude), (list(only) if only is not None else None)
    with _quiet_root_logger(), tempfile.TemporaryDirectory(prefix="edge-slim-calib-") as tmp:
        work = Path(cache_dir) if cache_dir is not None else Path(tmp)
        return _build(Q, qt, calib, Path(src), Path(dst), form, feeds, method, exclude, only, work, weight_bits == 7)


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantizers log advice ("consider pre-processing") on the root logger at WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _build(Q, qt, calib, src, dst, form, feeds, method, exclude, only, work, reduce_range):
    cur = src
    for k, step in enumerate(form.steps):
        out = dst if k == len(form.steps) - 1 else dst.with_name(f"{dst.stem}.step{k}.onnx")
        model = onnx.load(str(cur))
        ruled = sorted(fp32_by_rule(model, step))
        exclude_k = exclude + ruled
        only_k = None if only is None else [n for n in only if n not in ruled]
        if only_k == []:  # nothing of this step to quantize (ORT reads an empty list as "all nodes")
            onnx.save(model, str(out))
        elif step.kind == "weights":
            onnx.save(quantize_weights(model, step.ops, set(only_k) if only_k is not None else None, set(exclude_k)),
                      str(out))
        elif step.kind == "dynamic":
            # the dynamic quantizer first rewrites Gemm <name> as MatMul <name>_MatMul + Add, then filters by name
            alias = lambda names: None if names is None else names + [n + "_MatMul" for n in names]
            Q.quantize_dynamic(cur, out, op_types_to_quantize=list(step.ops), per_channel=step.per_channel,
                               weight_type=Q.QuantType.QInt8, nodes_to_quantize=alias(only_k),
                               nodes_to_exclude=alias(exclude_k), reduce_range=reduce_range,
                               extra_options={"MatMulConstBOnly": True})
        else:
            if not feeds:
                raise BadInputError("this form needs calibration data (--calib-samples or --calib)")
            Q.quantize_static(cur, out, FeedReader(feeds), quant_format=Q.QuantFormat.QDQ if step.qformat == "qdq"
                              else Q.QuantFormat.QOperator, op_types_to_quantize=list(step.ops), per_channel=True,
                              activation_type=qt[step.activation], weight_type=Q.QuantType.QInt8,
                              nodes_to_quantize=only_k, nodes_to_exclude=exclude_k, calibrate_method=calib,
                              reduce_range=reduce_range,
                              calibration_cache_path=work / f"calib-{'-'.join(step.ops)}-{method}.json",
                              extra_options={"MatMulConstBOnly": True})
        if cur != src:
            cur.unlink()
        cur = out
    onnx.save(strip_debug_info(onnx.load(str(dst))), str(dst))
    return dst


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what inference never reads: the exporter's per-node metadata (stack traces, FX nodes: ~5 % of the
    fp32 file, ~15 % of an int8 one), doc strings and value_info."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    del model.graph.value_info[:]
    return model


# -- evaluation and sensitivity -------------------------------------------------------------------
def _session(model_file: Path, manifest: dict, threads: int | None = None, arithmetic: str | None = None):
    """ONNX Runtime, or, when it computes in another integer arithmetic on this CPU than the one asked for,
    the NumPy backend in that arithmetic (exact, or ORT's AVX2 form emulated bit for bit)."""
    from ...runtime.session import Session
    from .int8_arith import ort_u8s8_arithmetic
    bundle = B.Bundle(model_file.parent, {**manifest, "model_file": model_file.name})
    if arithmetic is None or arithmetic == ort_u8s8_arithmetic():
        return Session(bundle, backend="ort", threads=threads)
    return Session(bundle, backend="numpy", threads=threads, backend_options={"arithmetic": arithmetic})


def task_scores(model_file: Path, manifest: dict, samples: int, threads: int | None = None,
                arithmetic: str | None = None) -> dict:
    """Held-out accuracy (edge_slim.scenes.evaluate on seed 1) of one ONNX file with the bundle's tokenizer,
    computed in `arithmetic` (None: whatever ONNX Runtime does on this CPU). The describe head is judged
    apart, once (describe.py), not in every trial of the budget loop."""
    from ...scenes.evaluate import DEFAULT_EVAL_SEED, evaluate
    return evaluate(_session(model_file, manifest, threads, arithmetic), samples=samples, seed=DEFAULT_EVAL_SEED,
                    describe=False)


def worst_scores(by_arithmetic: dict[str, dict]) -> dict:
    """Per metric (and family) the lowest score over the arithmetics the bundle may meet: the budget's figure."""
    runs = list(by_arithmetic.values())
    out = {**runs[0], **{k: min(r[k] for r in runs) for k in HEADLINE}}
    out["per_family"] = {f: min(r["per_family"].get(f, 0.0) for r in runs) for f in runs[0]["per_family"]}
    return out


def accuracy_drop(fp32: dict, int8: dict) -> float:
    """The largest drop over VQA accuracy, match R@1 and locate IoU>=0.5 (fractions, 0.01 = 1 point)."""
    return max(fp32[k] - int8[k] for k in HEADLINE)


_SENS_OUTPUTS = ("answer_logits", "match_logit", "box")


def output_error(model_file: Path, feeds: list[dict], ref: dict[str, np.ndarray]) -> float:
    """Sum over the task outputs of the mean squared error vs fp32, each normalized by fp32's variance."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    got = [sess.run(list(_SENS_OUTPUTS), f) for f in feeds]
    return float(sum(np.mean((np.stack([g[j] for g in got]) - ref[o]) ** 2) / (ref[o].var() + 1e-12)
                     for j, o in enumerate(_SENS_OUTPUTS)))


def fp32_outputs(model_file: Path, feeds: list[dict]) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    got = [sess.run(list(_SENS_OUTPUTS), f) for f in feeds]
    return {o: np.stack([g[j] for g in got]) for j, o in enumerate(_SENS_OUTPUTS)}


def sensitivity(src: Path, form: Form, names: list[str], feeds, sens_feeds, method: str, work: Path,
                log: Callable[[str], None] = lambda m: None,
                weight_bits: int = DEFAULT_WEIGHT_BITS) -> dict[str, float]:
    """Per node: output error vs fp32 when only that node is quantized (larger = more sensitive), in ONNX
    Runtime's arithmetic on this CPU (a ranking; the budget itself is checked in every arithmetic)."""
    ref = fp32_outputs(src, sens_feeds)
    out = {}
    for i, name in enumerate(names):
        f = build(src, work / "sens.onnx", form, feeds, method, only=[name], cache_dir=work, weight_bits=weight_bits)
        out[name] = output_error(f, sens_feeds, ref)
        if (i + 1) % 10 == 0 or i + 1 == len(names):
            log(f"sensitivity {i + 1}/{len(names)}")
    return out


# -- the budget loop ------------------------------------------------------------------------------
def fit_budget(fp32_scores: dict, try_excluding: Callable[[list[str]], dict], rank: Callable[[], list[str]],
               max_drop: float, max_fp32_nodes: int, log: Callable[[str], None] = lambda m: None):
    """Keep the most sensitive nodes in fp32, k at a time (k = 1, 2, 3, 5, 8, ...), then bisect to the
    smallest k that fits. -> (k, ranking or [], scores at k, trials). Raises BudgetError when even
    `max_fp32_nodes` kept nodes leave the drop above the budget."""
    scores = try_excluding([])
    trials = [{"kept_fp32": 0, "drop": round(accuracy_drop(fp32_scores, scores), 4)}]
    log(f"int8 drop {trials[0]['drop']:.4f} with every node quantized (budget {max_drop:.4f})")
    if accuracy_drop(fp32_scores, scores) <= max_drop:
        return 0, [], scores, trials
    order = rank()
    limit = min(max_fp32_nodes, len(order))
    results = {0: scores}

    def attempt(k):
        results[k] = try_excluding(order[:k])
        d = accuracy_drop(fp32_scores, results[k])
        trials.append({"kept_fp32": k, "drop": round(d, 4)})
        log(f"  {k} node(s) kept in fp32: drop {d:.4f}")
        return d <= max_drop

    if limit == 0:
        _fail(trials, max_drop, limit)
    lo, k = 0, 1
    while not attempt(k):
        lo = k
        if k >= limit:
            _fail(trials, max_drop, limit)
        k = min(limit, max(k + 1, math.ceil(k * 1.5)))
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return hi, order, results[hi], trials


def _fail(trials, max_drop, limit):
    best = min(trials, key=lambda t: t["drop"])
    raise BudgetError(f"accuracy drop {best['drop'] * 100:.2f} points (best reached, with {best['kept_fp32']} node(s) "
                      f"kept in fp32) exceeds the budget of {max_drop * 100:.2f} points with at most {limit} fp32 "
                      "node(s) allowed (--max-fp32-nodes); nothing written")


def model_bytes(path: Path) -> int:
    return Path(path).stat().st_size


def default_out(model: Path, suffix: str = "int8") -> Path:
    model = Path(model)
    stem = model.name[: -len(".tar")] if model.name.endswith(".tar") else model.name
    return model.with_name(f"{stem}-{suffix}")


def quantize_bundle(model=None, out=None, *, calib_samples: int = 100, calib_dir=None, method: str = "minmax",
                    form: str = DEFAULT_FORM, max_drop: float = 0.01, max_fp32_nodes: int = 16,
                    eval_samples: int = 500, threads: int | None = None, fuse: bool = False,
                    weight_bits: int = DEFAULT_WEIGHT_BITS, arithmetic: str = "auto",
                    describe_samples: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Quantize a fp32 bundle to an int8 bundle at `out` within `max_drop`; -> the quantization report.

    The int8 accuracy is checked in every integer arithmetic of `check_arithmetics(form, weight_bits,
    arithmetic)` and the budget applies to the worst. Raises BudgetError (and writes nothing) when the
    budget cannot be met. A describe head's decoder graph is quantized in the same form where its caption
    figures on `describe_samples` held-out scenes (default min(eval_samples, 200)) stay within `max_drop`, else
    carried fp32 (aot/quantize/describe.py).
    """
    if form not in FORMS:
        raise BadInputError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")
    if weight_bits not in WEIGHT_BITS:
        raise BadInputError(f"weight bits must be one of {', '.join(map(str, WEIGHT_BITS))}, not {weight_bits}")
    arithmetics = check_arithmetics(FORMS[form], weight_bits, arithmetic)
    if method not in METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    src_b = B.open_bundle(model)
    m = src_b.manifest
    if m["format"] != "onnx" or m["precision"] != "fp32":
        raise ModelError(f"{src_b.path} is a {m['format']}/{m['precision']} bundle; quantize takes an fp32 ONNX bundle")
    out = Path(out) if out is not None else default_out(src_b.path if model is None else Path(model))
    if out.resolve() == src_b.path.resolve():
        raise BadInputError(f"the output {out} would replace the input bundle; pass another -o")
    F, t0 = FORMS[form], time.time()
    prep = _session(src_b.model_path, m, threads)
    if calib_dir is not None:
        feeds, calib_desc = folder_feeds(prep, calib_dir), {"kind": "folder", "path": str(calib_dir)}
    else:
        feeds = scene_feeds(prep, calib_samples)
        calib_desc = {"kind": "generated scenes", "seed": CALIB_SEED, "scenes": calib_samples}
    calib_desc["feeds"] = len(feeds)
    if not F.calibrated:
        calib_desc["used"] = f"not needed by form {form} (only for sensitivity)"
    log(f"int8 {form} ({F.summary}): {src_b.path} -> {out}; calibration {len(feeds)} inputs from "
        f"{calib_desc.get('path') or calib_desc['kind']} ({method}); {weight_bits}-bit weights; budget {max_drop}, "
        f"<= {max_fp32_nodes} fp32 nodes, {eval_samples} held-out scenes checked in {' and '.join(arithmetics)} "
        f"arithmetic{', q/k/v fused' if fuse else ''}")

    with tempfile.TemporaryDirectory(prefix="edge-slim-quantize-") as tmp:
        work = Path(tmp)
        src, fused = work / "fp32.onnx", 0
        if fuse:
            g, fused = fuse_parallel_linears(onnx.load(str(src_b.model_path)))
            onnx.save(g, str(src))
            log(f"fused {fused} groups of parallel linear layers (q/k/v, ...) into single MatMuls")
        else:
            src.write_bytes(src_b.model_path.read_bytes())
        fp32_scores = task_scores(src, m, eval_samples, threads)
        log(f"fp32 on {eval_samples} held-out scenes: VQA {fp32_scores['vqa_accuracy']:.4f}, match R@1 "
            f"{fp32_scores['match_r1']:.4f}, locate {fp32_scores['locate_iou50']:.4f}")
        names = candidates(onnx.load(str(src)), F)
        cand = work / "int8.onnx"
        sens: dict[str, float] = {}

        tried: dict[tuple, dict[str, dict]] = {}  # fp32-kept nodes -> scores per arithmetic

        def try_excluding(excl):
            build(src, cand, F, feeds, method, exclude=excl, cache_dir=work, weight_bits=weight_bits)
            tried[tuple(excl)] = {a: task_scores(cand, m, eval_samples, threads, arithmetic=a) for a in arithmetics}
            return worst_scores(tried[tuple(excl)])

        def rank():
            log(f"measuring per-node sensitivity on {min(len(feeds), SENSITIVITY_FEEDS)} calibration inputs")
            step = max(1, len(feeds) // SENSITIVITY_FEEDS)
            sens.update(sensitivity(src, F, names, feeds, feeds[::step][:SENSITIVITY_FEEDS], method, work, log,
                                    weight_bits))
            return sorted(names, key=lambda n: -sens[n])

        k, order, int8_scores, trials = fit_budget(fp32_scores, try_excluding, rank, max_drop, max_fp32_nodes, log)
        kept = order[:k]
        build(src, cand, F, feeds, method, exclude=kept, cache_dir=work, weight_bits=weight_bits)
        by_arith = tried[tuple(kept)]
        report = _report(form, method, calib_desc, fp32_scores, int8_scores, names, kept, sens, trials, max_drop,
                         model_bytes(src_b.model_path), model_bytes(cand), eval_samples, _modules(src),
                         strip_debug_info(onnx.load(str(src_b.model_path))).ByteSize())
        report["integer"] = integer_form(F, weight_bits, arithmetics)
        report["eval"]["by_arithmetic"] = {a: {k: r[k] for k in HEADLINE} for a, r in by_arith.items()}
        report["fused_linear_groups"] = fused
        report["quantized_from"] = {"name": m["name"], "model_sha256": m["files"][m["model_file"]]["sha256"]}
        describe = None
        if m.get("describe"):
            from .describe import quantize_describe
            n = min(eval_samples, 200) if describe_samples is None else describe_samples
            describe, report["describe"] = quantize_describe(
                src_b, cand, work, F, feeds, method=method, weight_bits=weight_bits, arithmetics=arithmetics,
                max_drop=max_drop, samples=n, max_fp32_nodes=max_fp32_nodes, threads=threads, fuse=fuse, log=log)
        report["seconds"] = round(time.time() - t0, 1)
        _write_bundle(out, cand, m, report, int8_scores, describe)
    sizes = {k: sum(f["bytes"] for f in B.open_bundle(p).manifest["files"].values()) + (p / B.MANIFEST).stat().st_size
             for k, p in (("fp32", src_b.path), ("int8", out))}
    log(f"wrote {out}: {sizes['int8'] / 1e6:.2f} MB bundle ({sizes['int8'] / sizes['fp32']:.3f} x fp32's), "
        f"drop {report['drop'] * 100:.2f} points, {len(kept)} node(s) kept in fp32")
    return {"bundle": str(out), **report, "bundle_bytes": sizes, "bundle_ratio": round(sizes["int8"] / sizes["fp32"], 4)}


def _modules(path: Path) -> dict[str, str]:
    return {n.name: module_of(n) for n in onnx.load(str(path)).graph.node}


def _report(form, method, calib, fp32, int8, names, kept, sens, trials, max_drop, fp32_bytes, int8_bytes, samples,
            modules, stripped_bytes):
    med = float(np.median(list(sens.values()))) if sens else 0.0
    why = {n: (f"{modules.get(n) or n}: sensitivity rank {i + 1} of {len(names)}, output error {sens[n]:.3g} with "
               f"only this node int8 (median node {med:.3g}); kept so the accuracy drop fits {max_drop * 100:.2f} points")
           for i, n in enumerate(kept)}
    fams = sorted(set(fp32["per_family"]) | set(int8["per_family"]))
    return {
        "form": form, "summary": FORMS[form].summary, "method": method if FORMS[form].calibrated else "none (dynamic)",
        "calibration": calib, "max_accuracy_drop": max_drop, "drop": round(accuracy_drop(fp32, int8), 4),
        "eval": {"samples": samples, "seed": fp32["seed"],
                 "fp32": {k: fp32[k] for k in HEADLINE}, "int8": {k: int8[k] for k in HEADLINE},
                 "per_family": {f: {"fp32": fp32["per_family"].get(f), "int8": int8["per_family"].get(f)} for f in fams}},
        "size": {"fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes, "ratio": round(int8_bytes / fp32_bytes, 4),
                 "fp32_stripped_bytes": stripped_bytes, "ratio_vs_stripped_fp32": round(int8_bytes / stripped_bytes, 4)},
        "quantized_nodes": len(names) - len(kept), "candidate_nodes": len(names),
        "kept_fp32": list(kept), "kept_fp32_why": why, "fp32_by_design": FP32_BY_DESIGN, "budget_trials": trials,
    }


def _write_bundle(out: Path, model_file: Path, src_manifest: dict, report: dict, scores: dict,
                  describe: Path | None = None) -> None:
    import onnxruntime
    with B.staging_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(model_file.read_bytes())
        man = {k: v for k, v in src_manifest.items() if k not in ("files", "source_model_sha256")}
        if describe is not None:  # same file name; write_manifest checksums it with the rest
            rec = report["describe"]
            (tmp / src_manifest["describe"]["graph"]).write_bytes(strip_debug_info(onnx.load(str(describe)))
                                                                  .SerializeToString())
            man["describe"] = {**src_manifest["describe"], "precision": rec["precision"]}
            scores = {**scores, "describe": rec["eval"]["int8" if rec["precision"] == "int8" else "fp32_decoder"]}
        man.update(name=f"{src_manifest['name']}-int8", precision="int8", model_file="model.onnx", eval=scores,
                   quantization=report,
                   toolchain={**(src_manifest.get("toolchain") or {}), "onnxruntime": onnxruntime.__version__})
        B.write_manifest(tmp, man)
