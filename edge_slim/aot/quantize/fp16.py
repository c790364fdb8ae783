"""fp16 export for GPU targets: the graph in half precision, with the layers that need it in fp32.

Written with onnx alone (no onnxconverter-common). Every float tensor becomes fp16 except where a
node in KEEP_FP32 reads or writes it: LayerNorm, Softmax and reductions accumulate over 128-512
values or exponentiate, where fp16's 11-bit mantissa and 65504 range lose accuracy; Clip holds
F.normalize's 1e-12 floor, which is 0 in fp16. Casts go in at each boundary; graph inputs and
outputs stay float32, so callers feed and read the same arrays as for the fp32 bundle.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import ModelError
from ...runtime import bundle as B

KEEP_FP32 = frozenset({"LayerNormalization", "Softmax", "ReduceSum", "ReduceMean", "ReduceL2", "ReduceMax",
                       "ReduceMin", "ReduceLogSumExp", "Clip", "Pow", "Sqrt", "Exp", "Log"})
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    t = {i.name: i.data_type for i in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        t[v.name] = v.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    t[n.output[0]] = a.t.data_type
    return t


def to_fp16(model: onnx.ModelProto, keep_fp32=KEEP_FP32) -> tuple[onnx.ModelProto, list[str]]:
    """-> (mixed-precision model, names of the nodes kept in fp32). float32 I/O is preserved."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    types = _elem_types(model)
    is_float = lambda name: types.get(name) == F32
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    out_names = {o.name for o in g.output}
    fp32_nodes = {id(n) for n in g.node if n.op_type in keep_fp32}
    native: dict[str, int] = {i.name: F32 for i in g.input if is_float(i.name)}   # type each tensor has after conversion

    # initializers and Constants: fp16 unless every reader stays fp32
    def wants16(name):
        return any(id(c) not in fp32_nodes for c in consumers.get(name, [])) or name in out_names
    inits = []
    for i in g.initializer:
        if i.data_type == F32 and wants16(i.name):
            a = numpy_helper.to_array(i)
            i = numpy_helper.from_array(np.clip(a, -65504, 65504).astype(np.float16), i.name)
            native[i.name] = F16
        elif i.data_type == F32:
            native[i.name] = F32
        inits.append(i)
    del g.initializer[:]
    g.initializer.extend(inits)

    casts: dict[tuple[str, int], str] = {}
    new_nodes = []

    def as_type(name: str, t: int) -> str:
        if native.get(name, t) == t:
            return name
        if (name, t) not in casts:
            casts[(name, t)] = f"{name}_as{'16' if t == F16 else '32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[(name, t)]], name=f"{name}_cast{t}", to=t))
        return casts[(name, t)]

    for n in g.node:
        region = F32 if id(n) in fp32_nodes else F16
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == F32 and region == F16 and wants16(n.output[0]):
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
            native[n.output[0]] = F16 if types.get(n.output[0]) == F32 and wants16(n.output[0]) else types.get(n.output[0])
            new_nodes.append(n)
            continue
        for k, x in enumerate(n.input):
            if x and is_float(x):
                n.input[k] = as_type(x, region)
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == F32 and region == F16:
                    a.i = F16
        for a in n.attribute:
            if n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == F32 and region == F16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        for y in n.output:
            if is_float(y):
                native[y] = region
        new_nodes.append(n)
    # graph outputs keep float32: the producer writes <name>_fp16 and a Cast restores the name
    tail = []
    for o in g.output:
        if is_float(o.name) and native.get(o.name) == F16:
            inner = o.name + "_fp16"
            for n in new_nodes:
                n.output[:] = [inner if y == o.name else y for y in n.output]
                n.input[:] = [inner if x == o.name else x for x in n.input]
            tail.append(helper.make_node("Cast", [inner], [o.name], name=o.name + "_cast_out", to=F32))
    kept = [n.name for n in new_nodes if id(n) in fp32_nodes]
    del g.node[:]
    g.node.extend(new_nodes + tail)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model, kept


def max_output_diff(a: Path, b: Path, feeds: list[dict]) -> float:
    import onnxruntime as ort
    sa, sb = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b))
    return float(max(np.abs(x - y).max() for f in feeds for x, y in zip(sa.run(None, f), sb.run(None, f))))


def fp16_bundle(model=None, out=None, *, max_drop: float = 0.01, eval_samples: int = 500,
                threads: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Write a mixed fp16 bundle beside an fp32 one, after checking held-out accuracy; -> the report."""
    from .slimpajama import (HEADLINE, BudgetError, _session, accuracy_drop, default_out, model_bytes, scene_feeds,
                           task_scores)
    src_b = B.open_bundle(model)
    m = src_b.manifest
    if m["format"] != "onnx" or m["precision"] != "fp32":
        raise ModelError(f"{src_b.path} is a {m['format']}/{m['precision']} bundle; fp16 export takes an fp32 ONNX bundle")
    out = Path(out) if out is not None else default_out(src_b.path if model is None else Path(model), "fp16")
    t0 = time.time()
    log(f"fp16: {src_b.path} -> {out}; budget {max_drop}, {eval_samples} held-out scenes")
    with tempfile.TemporaryDirectory(prefix="edge-slim-fp16-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "fp16.onnx"
        src.write_bytes(src_b.model_path.read_bytes())
        half, kept = to_fp16(onnx.load(str(src)))
        onnx.save(half, str(dst))
        diff = max_output_diff(src, dst, scene_feeds(_session(src, m), 10))
        a, b = task_scores(src, m, eval_samples, threads), task_scores(dst, m, eval_samples, threads)
        drop = accuracy_drop(a, b)
        log(f"fp16: max |output - fp32| {diff:.3g} on 10 scenes; accuracy drop {drop * 100:.2f} points")
        if drop > max_drop:
            raise BudgetError(f"fp16 accuracy drop {drop * 100:.2f} points exceeds the budget of {max_drop * 100:.2f} "
                              "points; nothing written")
        fams = sorted(a["per_family"])
        report = {"form": "fp16-mixed", "method": "cast", "summary": "fp16 graph, fp32 I/O and fp32 " + ", ".join(sorted(KEEP_FP32 & {n.op_type for n in half.graph.node})),
                  "kept_fp32": kept, "kept_fp32_why": "op types whose fp16 kernels lose accuracy (see edge_slim/aot/quantize/fp16.py)",
                  "max_abs_output_diff": diff, "max_accuracy_drop": max_drop, "drop": round(drop, 4),
                  "eval": {"samples": eval_samples, "seed": a["seed"], "fp32": {k: a[k] for k in HEADLINE},
                           "fp16": {k: b[k] for k in HEADLINE},
                           "per_family": {f: {"fp32": a["per_family"][f], "fp16": b["per_family"].get(f)} for f in fams}},
                  "size": {"fp32_bytes": model_bytes(src), "fp16_bytes": model_bytes(dst),
                           "ratio": round(model_bytes(dst) / model_bytes(src), 4)},
                  "seconds": round(time.time() - t0, 1)}
        with B.staging_dir(out) as stage:
            (stage / "model.onnx").write_bytes(dst.read_bytes())
            man = {k: v for k, v in m.items() if k not in ("files", "source_model_sha256")}
            man.update(name=f"{m['name']}-fp16", precision="fp16", eval=b, quantization=report)
            if m.get("describe"):  # the caption decoder rides along in fp32 (its I/O is fp32 either way)
                graph = m["describe"]["graph"]
                (stage / graph).write_bytes((src_b.path / graph).read_bytes())
                man["describe"] = {**m["describe"], "precision": "fp32"}
                report["describe"] = {"precision": "fp32", "why": "quantize --precision fp16 converts model.onnx only; "
                                      "the decoder is carried as exported"}
            B.write_manifest(stage, man)
    return {"bundle": str(out), **report}
