"""The pure-NumPy backend: protobuf decoding, per-op parity with ONNX Runtime, and whole-model parity
(fp32, dynamic int8, static QDQ int8) on a randomly initialised SlimPajama exported in-process.

ONNX Runtime is the reference throughout; op graphs run in ORT with graph optimizations off, so
ORT executes exactly the node we wrote (no constant folding or fusion).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edge_slim.errors import BadInputError, ModelError
from edge_slim.runtime.backends.numpy_backend import NumpyBackend
from edge_slim.runtime.backends.numpy_ops import OPS, erf
from edge_slim.runtime.onnx_proto import load_model, parse_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as oh  # noqa: E402
from onnx import numpy_helper as onh  # noqa: E402

from edge_slim.aot.quantize.int8_arith import ort_u8s8_arithmetic  # noqa: E402

HEADS = ("answer_logits", "match_logit", "box", "box_score", "image_embed", "text_embed")
# the export also hands the describe decoder its memory (image tokens + boxes), an intermediate that quantized and
# fp16 graphs are compared on only through the heads above
OUTPUTS = (*HEADS, "describe_memory")


@dataclass
class FakeBundle:
    model_path: Path
    manifest: dict = field(default_factory=lambda: {"format": "onnx"})
    path: Path = Path(".")


def ort_session(path, optimize: bool = False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def model_inputs(seed: int) -> dict[str, np.ndarray]:
    """Random image and a tokens row like the tokenizer's: [ask] first, words, zero padding."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((1, 16), np.int64)
    n = int(rng.integers(2, 16))
    tokens[0, 0] = 2
    tokens[0, 1:n] = rng.integers(5, 44, n - 1)
    return {"image": rng.standard_normal((1, 3, 96, 96)).astype(np.float32), "tokens": tokens}


# ---------------------------------------------------------------------------------------
# the dev model, exported once per session
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dev_backend(dev_model) -> NumpyBackend:
    return NumpyBackend(FakeBundle(dev_model))


def max_diffs(ref: dict, got: dict) -> dict[str, float]:
    assert set(ref) <= set(got)
    out = {}
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        out[k] = float(np.abs(got[k].astype(np.float64) - ref[k]).max()) if ref[k].size else 0.0
    return out


def test_parser_matches_onnx(dev_model):
    t = time.process_time()  # CPU time (a busy machine must not fail it); the bound only catches pathologies
    m = load_model(dev_model)
    assert time.process_time() - t < 1.0
    ref = onnx.load(str(dev_model))
    assert m.opsets[""] == next(o.version for o in ref.opset_import if o.domain in ("", "ai.onnx"))
    assert m.ir_version == ref.ir_version
    assert [vi.name for vi in m.graph.inputs] == [vi.name for vi in ref.graph.input]
    assert [vi.name for vi in m.graph.outputs] == list(OUTPUTS)
    assert m.graph.inputs[0].shape == (1, 3, 96, 96) and m.graph.inputs[1].elem_type == TP.INT64
    assert len(m.graph.initializers) == len(ref.graph.initializer)
    for t in ref.graph.initializer:
        a, b = onh.to_array(t), m.graph.initializers[t.name]
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), t.name
    assert len(m.graph.nodes) == len(ref.graph.node)
    for rn, n in zip(ref.graph.node, m.graph.nodes):
        assert (n.op_type, n.domain, n.name, n.inputs, n.outputs) == (
            rn.op_type, rn.domain, rn.name, list(rn.input), list(rn.output))
        assert set(n.attrs) == {a.name for a in rn.attribute}


def test_dev_model_parity_with_ort(dev_model, dev_backend):
    sess = ort_session(dev_model, optimize=True)
    assert dev_backend.output_names == list(OUTPUTS)
    for seed in range(4):
        feeds = model_inputs(seed)
        ref = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), feeds)))
        diffs = max_diffs(ref, dev_backend.run(feeds))
        assert max(diffs.values()) < 1e-4, diffs


def test_dev_model_latency(dev_backend):
    feeds = model_inputs(0)
    dev_backend.run(feeds)
    times = []
    for _ in range(5):
        t = time.process_time()  # CPU time, so a busy machine does not make this flaky
        dev_backend.run(feeds)
        times.append(time.process_time() - t)
    # ~10-20 ms of CPU per call; the bound only catches pathological slowdowns.
    assert min(times) < 0.5, times


def test_real_bundle_and_registry(dev_model, tmp_path):
    """The backend loads through the registry from a real, checksummed bundle directory."""
    from edge_slim.runtime import bundle as B
    from edge_slim.runtime.backends import backend_class

    d = tmp_path / "bundle"
    d.mkdir()
    (d / "model.onnx").write_bytes(dev_model.read_bytes())
    B.write_manifest(d, {"schema": B.SCHEMA_VERSION, "name": "t", "format": "onnx", "precision": "fp32",
                         "model_file": "model.onnx", "config": {}, "inputs": [], "outputs": [],
                         "tokenizer": {}, "answers": [], "preprocess": {}})
    be = backend_class("numpy")(B.open_bundle(d), threads=1)
    assert be.name == "numpy"
    assert set(be.run(model_inputs(1))) == set(OUTPUTS)


def test_threads_share_one_backend(dev_backend):
    feeds = [model_inputs(s) for s in range(4)]
    expected = [dev_backend.run(f) for f in feeds]
    results: dict[int, list] = {}

    def work(i):
        results[i] = [dev_backend.run(feeds[(i + k) % 4]) for k in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for k, out in enumerate(outs):
            want = expected[(i + k) % 4]
            assert all(np.array_equal(out[n], want[n]) for n in OUTPUTS)


def test_outputs_are_fresh_and_constants_read_only(dev_backend):
    feeds = model_inputs(2)
    a = dev_backend.run(feeds)
    a["answer_logits"][...] = 0  # callers may scribble on results
    b = dev_backend.run(feeds)
    assert not np.all(b["answer_logits"] == 0)
    assert all(not v.flags.writeable for v in dev_backend._consts.values())


def test_feed_errors(dev_backend):
    feeds = model_inputs(0)
    with pytest.raises(BadInputError, match="missing"):
        dev_backend.run({"image": feeds["image"]})
    with pytest.raises(BadInputError, match="int64"):
        dev_backend.run({**feeds, "tokens": feeds["tokens"].astype(np.int32)})
    with pytest.raises(BadInputError, match="shape"):
        dev_backend.run({**feeds, "image": feeds["image"][:, :, :64]})
    with pytest.raises(BadInputError, match="unknown"):
        dev_backend.run({**feeds, "extra": feeds["image"]})


def test_wrong_format_is_refused(dev_model):
    with pytest.raises(ModelError, match="tvm"):
        NumpyBackend(FakeBundle(dev_model, {"format": "tvm"}))


# ---------------------------------------------------------------------------------------
# quantized copies of the dev model
# ---------------------------------------------------------------------------------------
def assert_quantized_parity(path: Path, sess, seeds=range(4), arithmetic: str = "exact",
                            min_tight: float | None = None) -> dict[str, float]:
    """Quantized graphs amplify 1-ulp float differences into whole quantization steps now and then,
    so demand exact-looking agreement (< 1e-4) on most inputs (or `min_tight`) and closeness on all of them."""
    be = NumpyBackend(FakeBundle(path), arithmetic=arithmetic)
    worst, tight = {}, 0
    for seed in seeds:
        feeds = model_inputs(seed)
        ref = dict(zip(HEADS, sess.run(list(HEADS), feeds)))
        diffs = max_diffs(ref, be.run(feeds))
        for k, d in diffs.items():
            assert d <= 2e-2 * max(1.0, float(np.abs(ref[k]).max())), (k, diffs)
            worst[k] = max(worst.get(k, 0.0), d)
        tight += max(diffs.values()) < 1e-4
    assert tight >= (len(seeds) / 2 if min_tight is None else min_tight), worst
    return worst


@pytest.mark.parametrize("weight_bits", [8, 7])
def test_dynamic_int8_model_parity(dev_model, tmp_path, weight_bits):
    """8-bit weights: the NumPy backend in ORT's arithmetic on this CPU (saturating pairs on x86 without VNNI);
    7-bit weights ([-64, 64]) cannot saturate, so the exact arithmetic matches ORT on every CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    q = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(dev_model), str(q), weight_type=QuantType.QInt8, reduce_range=weight_bits == 7)
    ops = {n.op_type for n in load_model(q).graph.nodes}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    arithmetic = "exact" if weight_bits == 7 else ort_u8s8_arithmetic()
    sess = ort_session(q, optimize=True)  # fuses DynamicQuantizeLinear+MatMulInteger, computes the same numbers
    if arithmetic == "exact":
        assert_quantized_parity(q, sess)
        return
    # Saturating pairs: ORT's AVX2 kernels and NumPy's float ops also round differently here (both run their
    # AVX2 code), so fewer inputs agree to 1e-4; the emulation must explain most of ORT's distance from exact.
    worst = assert_quantized_parity(q, sess, arithmetic=arithmetic, min_tight=1)
    exact = NumpyBackend(FakeBundle(q))
    emulated = NumpyBackend(FakeBundle(q), arithmetic=arithmetic)
    gap = lambda be: sum(max(max_diffs(dict(zip(HEADS, sess.run(list(HEADS), model_inputs(s)))),
                                       be.run(model_inputs(s))).values()) for s in range(4))
    assert gap(emulated) < 0.5 * gap(exact), worst


def test_static_qdq_model_parity(dev_model, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([model_inputs(100 + s) for s in range(3)])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "qdq.onnx"
    quantize_static(str(dev_model), str(q), Reader(), quant_format=QuantFormat.QDQ)
    ops = {n.op_type for n in load_model(q).graph.nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Unoptimized ORT runs the QDQ graph node by node, as the spec defines it (and as we do)...
    assert_quantized_parity(q, ort_session(q))
    # ...while its default session fuses QDQ groups into integer kernels that round differently.
    be = NumpyBackend(FakeBundle(q))
    fused = ort_session(q, optimize=True)
    feeds = model_inputs(7)
    ref = dict(zip(HEADS, fused.run(list(HEADS), feeds)))
    for k, d in max_diffs(ref, be.run(feeds)).items():
        assert d <= 5e-2 * max(1.0, float(np.abs(ref[k]).max())), k


def test_fp16_model_parity(dev_model, tmp_path):
    """The fp16 export (float16 weights and math, Casts at the fp32 islands) runs and agrees with ORT
    to fp16 precision: about as close as ORT's own fp16 run is to its fp32 one (~3e-4 here)."""
    try:
        from edge_slim.aot.quantize.fp16 import to_fp16
    except ImportError as e:
        pytest.skip(f"fp16 export unavailable: {e}")
    path = tmp_path / "fp16.onnx"
    onnx.save(to_fp16(onnx.load(str(dev_model)))[0], str(path))
    assert any(t.dtype == np.float16 for t in load_model(path).graph.initializers.values())
    be, sess = NumpyBackend(FakeBundle(path)), ort_session(path, optimize=True)
    for seed in range(2):
        feeds = model_inputs(seed)
        ref = dict(zip(HEADS, sess.run(list(HEADS), feeds)))
        diffs = max_diffs(ref, be.run(feeds))
        assert max(diffs.values()) < 2e-3, diffs


# ---------------------------------------------------------------------------------------
# single-op graphs against ORT
# ---------------------------------------------------------------------------------------
def const(a) -> "Const":
    return Const(np.asarray(a))


@dataclass
class Const:
    """An op input stored as an initializer (ORT requires some inputs, such as axes, to be constant)."""
    value: np.ndarray


def op_model(op: str, inputs: list, attrs: dict, opset: int, n_out: int, domain: str = "") -> tuple:
    """One-node ModelProto: arrays become graph inputs, Const become initializers, None = omitted."""
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, v in enumerate(inputs):
        if v is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(v, Const):
            inits.append(onh.from_array(v.value, name))
        else:
            v = np.asarray(v)
            feeds[name] = v
            graph_inputs.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(v.dtype), v.shape))
    outs = [f"out{i}" for i in range(n_out)]
    node = oh.make_node(op, names, outs, domain=domain, **attrs)
    graph = oh.make_graph([node], "g", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    return model, feeds, outs


def run_both(tmp_path, op, inputs, attrs=None, opset=18, n_out=1, arithmetic="exact"):
    model, feeds, outs = op_model(op, inputs, attrs or {}, opset, n_out)
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    ref = ort_session(path).run(outs, feeds)
    got = NumpyBackend(FakeBundle(path), arithmetic=arithmetic).run(feeds)
    return ref, [got[o] for o in outs]


def assert_same(ref, got, exact=False):
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape, (g.dtype, r.dtype, g.shape, r.shape)
        if exact or not np.issubdtype(r.dtype, np.floating):
            np.testing.assert_array_equal(g, r)
        else:
            tol = 2e-3 if r.dtype == np.float16 else 2e-6
            np.testing.assert_allclose(g.astype(np.float64), r, rtol=tol, atol=tol)


R = np.random.default_rng(1234)
f32 = lambda *s: R.standard_normal(s).astype(np.float32)  # noqa: E731
I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min

# (id, op, inputs, attrs, opset, n_outputs)
FLOAT_CASES = [
    ("add-broadcast", "Add", [f32(2, 3, 4), f32(4)], {}, 18, 1),
    ("sub", "Sub", [f32(3, 1), f32(1, 5)], {}, 18, 1),
    ("mul", "Mul", [f32(2, 3), f32(2, 3)], {}, 18, 1),
    ("div", "Div", [f32(4, 5), f32(5) + 3], {}, 18, 1),
    ("div-int-trunc", "Div", [np.array([-7, 7, -7, 7, 0, -1], np.int64), np.array([2, 2, -2, -2, 3, 4], np.int64)],
     {}, 18, 1),
    ("pow", "Pow", [np.abs(f32(3, 4)), f32(3, 4)], {}, 18, 1),
    ("pow-int-exp", "Pow", [f32(6), np.array(3, np.int64)], {}, 18, 1),
    ("sqrt", "Sqrt", [np.abs(f32(7))], {}, 18, 1),
    ("exp", "Exp", [f32(3, 3)], {}, 18, 1),
    ("tanh", "Tanh", [f32(9) * 4], {}, 18, 1),
    ("neg", "Neg", [f32(4)], {}, 18, 1),
    ("relu", "Relu", [f32(10)], {}, 18, 1),
    ("sigmoid-extremes", "Sigmoid", [np.array([-1e4, -100, -20, -1, 0, 1, 20, 100, 1e4], np.float32)], {}, 18, 1),
    ("erf-grid", "Erf", [np.linspace(-7, 7, 20001, dtype=np.float32)], {}, 18, 1),
    ("max3", "Max", [f32(2, 3), f32(3), f32(1, 1)], {}, 18, 1),
    ("min2", "Min", [f32(2, 3), f32(2, 1)], {}, 18, 1),
    ("clip-min-only", "Clip", [f32(10), const(np.float32(-0.3))], {}, 18, 1),
    ("clip-max-only", "Clip", [f32(10), None, const(np.float32(0.2))], {}, 18, 1),
    ("clip-both", "Clip", [f32(10), const(np.float32(-0.5)), const(np.float32(0.5))], {}, 18, 1),
    ("clip-none", "Clip", [f32(10)], {}, 18, 1),
    ("equal", "Equal", [np.array([[1, 0, 3]], np.int64), np.array([0], np.int64)], {}, 18, 1),
    ("not", "Not", [np.array([True, False, True])], {}, 18, 1),
    ("where", "Where", [np.array([[True], [False]]), f32(2, 3), f32(3)], {}, 18, 1),
    ("cast-f16", "Cast", [f32(5, 5) * 100], {"to": TP.FLOAT16}, 18, 1),
    ("cast-int32-trunc", "Cast", [np.array([-2.7, -1.5, -0.2, 0.2, 1.5, 2.7], np.float32)], {"to": TP.INT32}, 18, 1),
    ("cast-bool", "Cast", [np.array([0.0, -0.0, 1e-30, 2, np.nan], np.float32)], {"to": TP.BOOL}, 18, 1),
    ("cast-bool-float", "Cast", [np.array([True, False])], {"to": TP.FLOAT}, 18, 1),
    ("reshape-0-neg1", "Reshape", [f32(2, 3, 4), const(np.array([0, -1], np.int64))], {}, 18, 1),
    ("reshape-allowzero", "Reshape", [np.zeros((0, 3), np.float32), const(np.array([3, 0], np.int64))],
     {"allowzero": 1}, 18, 1),
    ("transpose-perm", "Transpose", [f32(2, 3, 4)], {"perm": [2, 0, 1]}, 18, 1),
    ("transpose-default", "Transpose", [f32(2, 3, 4)], {}, 18, 1),
    ("unsqueeze-input", "Unsqueeze", [f32(3, 4), const(np.array([-1, 0], np.int64))], {}, 18, 1),
    ("unsqueeze-attr", "Unsqueeze", [f32(3, 4)], {"axes": [1]}, 11, 1),
    ("squeeze-axes", "Squeeze", [f32(1, 3, 1, 2), const(np.array([-2], np.int64))], {}, 18, 1),
    ("squeeze-all", "Squeeze", [f32(1, 3, 1, 2)], {}, 18, 1),
    ("expand", "Expand", [f32(3, 1), const(np.array([2, 1, 4], np.int64))], {}, 18, 1),
    ("slice-neg-huge", "Slice", [f32(5, 6), const(np.array([-3, 1], np.int64)), const(np.array([I64_MAX, -1], np.int64))],
     {}, 18, 1),
    ("slice-axes-steps", "Slice", [f32(5, 6, 7), const(np.array([1, 0], np.int64)), const(np.array([6, 7], np.int64)),
                                   const(np.array([-1, 1], np.int64)), const(np.array([2, 3], np.int64))], {}, 18, 1),
    ("slice-reverse", "Slice", [f32(5, 6), const(np.array([-1], np.int64)), const(np.array([I64_MIN], np.int64)),
                                const(np.array([1], np.int64)), const(np.array([-1], np.int64))], {}, 18, 1),
    ("slice-reverse-partial", "Slice", [f32(8), const(np.array([100], np.int64)), const(np.array([2], np.int64)),
                                        const(np.array([0], np.int64)), const(np.array([-3], np.int64))], {}, 18, 1),
    ("slice-empty", "Slice", [f32(4, 3), const(np.array([10], np.int64)), const(np.array([20], np.int64))], {}, 18, 1),
    ("gather-neg", "Gather", [f32(5, 3), np.array([0, -1, 2, -5], np.int64)], {}, 18, 1),
    ("gather-axis1-2d", "Gather", [f32(2, 6, 3), np.array([[1, 5], [0, 0]], np.int64)], {"axis": 1}, 18, 1),
    ("gather-scalar", "Gather", [f32(2, 6, 3), np.array(-2, np.int64)], {"axis": 1}, 18, 1),
    ("concat", "Concat", [f32(2, 1), f32(2, 3), f32(2, 2)], {"axis": -1}, 18, 1),
    ("split-num-outputs", "Split", [f32(8, 2)], {"axis": 0, "num_outputs": 3}, 18, 3),
    ("split-input", "Split", [f32(2, 8), const(np.array([2, 6], np.int64))], {"axis": 1}, 18, 2),
    ("split-attr", "Split", [f32(6, 2)], {"split": [1, 5]}, 11, 2),
    ("split-equal", "Split", [f32(6, 2)], {}, 13, 3),
    ("flatten-0", "Flatten", [f32(2, 3, 4)], {"axis": 0}, 18, 1),
    ("flatten-2", "Flatten", [f32(2, 3, 4)], {"axis": 2}, 18, 1),
    ("shape", "Shape", [f32(2, 3, 4)], {}, 18, 1),
    ("shape-start-end", "Shape", [f32(2, 3, 4, 5)], {"start": 1, "end": -1}, 18, 1),
    ("identity", "Identity", [f32(3)], {}, 18, 1),
    ("reducesum-13", "ReduceSum", [f32(2, 3, 4), const(np.array([1], np.int64))], {"keepdims": 0}, 13, 1),
    ("reducesum-all", "ReduceSum", [f32(2, 3, 4)], {}, 13, 1),
    ("reducesum-noop", "ReduceSum", [f32(2, 3)], {"noop_with_empty_axes": 1}, 13, 1),
    ("reducemean-18", "ReduceMean", [f32(2, 3, 4), const(np.array([-1, 0], np.int64))], {}, 18, 1),
    ("reducemean-17-attr", "ReduceMean", [f32(2, 3, 4)], {"axes": [1], "keepdims": 0}, 17, 1),
    ("reducemax-18", "ReduceMax", [f32(2, 3, 4), const(np.array([2], np.int64))], {"keepdims": 0}, 18, 1),
    ("reducemin-18", "ReduceMin", [f32(2, 3, 4), const(np.array([1], np.int64))], {}, 18, 1),
    ("reducel2-18", "ReduceL2", [f32(2, 3, 4), const(np.array([-1], np.int64))], {}, 18, 1),
    ("reducel2-17-attr", "ReduceL2", [f32(2, 3, 4)], {"axes": [-1], "keepdims": 1}, 17, 1),
    ("argmax", "ArgMax", [f32(3, 5)], {"axis": 1, "keepdims": 0}, 18, 1),
    ("argmax-last", "ArgMax", [np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)], {"axis": 1, "select_last_index": 1},
     18, 1),
    ("softmax-13", "Softmax", [f32(2, 3, 5)], {"axis": 1}, 13, 1),
    ("softmax-11-coerce", "Softmax", [f32(2, 3, 5)], {}, 11, 1),
    ("layernorm", "LayerNormalization", [f32(2, 5, 8), f32(8), f32(8)], {"epsilon": 1e-5}, 17, 1),
    ("layernorm-axis1-nobias", "LayerNormalization", [f32(2, 3, 4), f32(3, 4)], {"axis": 1}, 17, 1),
    ("batchnorm", "BatchNormalization", [f32(2, 3, 4, 4), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.1], {}, 15, 1),
    ("matmul", "MatMul", [f32(4, 5), f32(5, 3)], {}, 18, 1),
    ("matmul-batched", "MatMul", [f32(2, 1, 3, 4), f32(5, 4, 6)], {}, 18, 1),
    ("matmul-vec", "MatMul", [f32(4), f32(2, 4, 3)], {}, 18, 1),
    ("gemm", "Gemm", [f32(4, 3), f32(5, 4), f32(5)], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, 18, 1),
    ("gemm-noc", "Gemm", [f32(3, 4), f32(4, 2)], {}, 18, 1),
    ("conv-stride-pad", "Conv", [f32(1, 3, 11, 11), f32(8, 3, 3, 3), f32(8)],
     {"strides": [2, 2], "pads": [1, 1, 1, 1]}, 18, 1),
    ("conv-asym-pad-dilation", "Conv", [f32(2, 2, 9, 10), f32(4, 2, 3, 2)],
     {"pads": [0, 1, 2, 0], "dilations": [2, 1]}, 18, 1),
    ("conv-group", "Conv", [f32(1, 4, 7, 7), f32(6, 2, 3, 3), f32(6)], {"group": 2}, 18, 1),
    ("conv-depthwise", "Conv", [f32(1, 3, 6, 6), f32(3, 1, 3, 3)], {"group": 3, "pads": [1, 1, 1, 1]}, 18, 1),
    ("conv-same-upper", "Conv", [f32(1, 2, 8, 7), f32(3, 2, 4, 3)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 18, 1),
    ("conv-1d", "Conv", [f32(1, 2, 12), f32(3, 2, 5), f32(3)], {"strides": [3], "pads": [2, 1]}, 18, 1),
]


@pytest.mark.parametrize("case", FLOAT_CASES, ids=[c[0] for c in FLOAT_CASES])
def test_op_matches_ort(tmp_path, case):
    _, op, inputs, attrs, opset, n_out = case
    ref, got = run_both(tmp_path, op, inputs, attrs, opset, n_out)
    assert_same(ref, got)


def test_constant_variants(tmp_path):
    for attrs in ({"value": onh.from_array(f32(2, 3))}, {"value_float": 1.5}, {"value_floats": [1.0, 2.5]},
                  {"value_int": -3}, {"value_ints": [4, -5]}):
        ref, got = run_both(tmp_path, "Constant", [], attrs)
        assert_same(ref, got, exact=True)


F16_CASES = [
    ("add-f16", "Add", [f32(3, 4).astype(np.float16), f32(4).astype(np.float16)], {}, 18, 1),
    ("matmul-f16", "MatMul", [f32(4, 64).astype(np.float16), f32(64, 8).astype(np.float16)], {}, 18, 1),
    ("layernorm-f16", "LayerNormalization", [f32(2, 16).astype(np.float16), f32(16).astype(np.float16),
                                             f32(16).astype(np.float16)], {}, 17, 1),
    ("softmax-f16", "Softmax", [f32(3, 7).astype(np.float16)], {}, 13, 1),
    ("cast-f16-f32", "Cast", [f32(9).astype(np.float16)], {"to": TP.FLOAT}, 18, 1),
    ("erf-f16", "Erf", [np.linspace(-4, 4, 801).astype(np.float16)], {}, 18, 1),
]


@pytest.mark.parametrize("case", F16_CASES, ids=[c[0] for c in F16_CASES])
def test_float16_op_matches_ort(tmp_path, case):
    _, op, inputs, attrs, opset, n_out = case
    try:
        ref, got = run_both(tmp_path, op, inputs, attrs, opset, n_out)
    except Exception as e:  # ORT's CPU provider lacks some float16 kernels
        if "NOT_IMPLEMENTED" in str(e) or "Could not find an implementation" in str(e):
            pytest.skip(f"ORT has no float16 {op} on CPU")
        raise
    assert_same(ref, got)


def test_erf_accuracy():
    xs = np.linspace(-8, 8, 400001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in xs.astype(np.float64)])
    assert np.array_equal(erf(xs), exact.astype(np.float32))  # correctly rounded to float32
    x64 = np.concatenate([np.linspace(-30, 30, 20001), [1e-300, -1e-8, 0.46875, 4.0, 26.6]])
    exact64 = np.array([math.erf(v) for v in x64])
    assert np.all(np.abs(erf(x64) - exact64) <= 1e-15 * np.maximum(np.abs(exact64), 1e-300))
    specials = erf(np.array([np.inf, -np.inf, np.nan, -0.0], np.float32))
    assert specials[0] == 1 and specials[1] == -1 and np.isnan(specials[2]) and np.signbit(specials[3])


# ---------------------------------------------------------------------------------------
# integer / quantization ops: exact against ORT
# ---------------------------------------------------------------------------------------
def u8(*s):
    return R.integers(0, 256, s).astype(np.uint8)


def i8(*s):
    return R.integers(-128, 128, s).astype(np.int8)


TIES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 126.5, 127.5, -128.5, 1e6, -1e6, 0.49999997], np.float32)
SCALE = np.float32(0.0173)

QUANT_CASES = [
    ("q-u8-ties", "QuantizeLinear", [TIES, const(np.float32(1.0)), const(np.uint8(128))], {}, 18, 1),
    ("q-i8-ties", "QuantizeLinear", [TIES, const(np.float32(1.0)), const(np.int8(0))], {}, 18, 1),
    ("q-i8-ties-halfscale", "QuantizeLinear", [TIES, const(np.float32(0.5)), const(np.int8(-3))], {}, 18, 1),
    ("q-default-u8", "QuantizeLinear", [f32(4, 5), const(SCALE)], {}, 18, 1),
    ("q-per-axis", "QuantizeLinear", [f32(2, 3, 4), const(np.array([0.01, 0.02, 0.05], np.float32)),
                                      const(np.array([0, -5, 7], np.int8))], {"axis": 1}, 18, 1),
    ("q-per-axis-last", "QuantizeLinear", [f32(3, 4), const(np.array([0.01, 0.02, 0.05, 0.1], np.float32)),
                                           const(np.array([0, 5, 7, 250], np.uint8))], {"axis": -1}, 18, 1),
    ("dq-u8", "DequantizeLinear", [u8(3, 4), const(SCALE), const(np.uint8(131))], {}, 18, 1),
    ("dq-i8-per-axis", "DequantizeLinear", [i8(4, 3), const(np.array([0.1, 0.2, 0.3], np.float32)),
                                            const(np.array([1, -2, 0], np.int8))], {"axis": 1}, 18, 1),
    ("dq-i8-per-axis-0", "DequantizeLinear", [i8(2, 3), const(np.array([0.5, 0.25], np.float32)),
                                              const(np.array([3, -3], np.int8))], {"axis": 0}, 18, 1),
    ("dq-int32", "DequantizeLinear", [R.integers(-2**31, 2**31 - 1, 7).astype(np.int32), const(SCALE)], {}, 18, 1),
    ("dynq-random", "DynamicQuantizeLinear", [f32(16, 32) * 3], {}, 18, 3),
    ("dynq-positive", "DynamicQuantizeLinear", [np.abs(f32(40)) + 0.5], {}, 18, 3),
    ("dynq-negative", "DynamicQuantizeLinear", [-np.abs(f32(40)) - 0.5], {}, 18, 3),
    ("dynq-zeros", "DynamicQuantizeLinear", [np.zeros((3, 4), np.float32)], {}, 18, 3),
    ("dynq-ties", "DynamicQuantizeLinear", [np.array([0.0, 2.55, 0.005, 0.015, 0.025, 1.275], np.float32)], {}, 18, 3),
    ("mmi-u8-i8", "MatMulInteger", [u8(2, 5, 64), const(i8(64, 7)), const(np.uint8(131)), const(np.int8(0))], {}, 18, 1),
    ("mmi-u8-u8-col-zp", "MatMulInteger", [u8(5, 32), const(u8(32, 6)), const(np.uint8(3)), const(u8(6))], {}, 18, 1),
    ("mmi-i8-i8-nozp", "MatMulInteger", [i8(4, 16), const(i8(16, 3))], {}, 18, 1),
    ("convint", "ConvInteger", [u8(1, 3, 10, 10), const(i8(4, 3, 3, 3)), const(np.uint8(120)), const(np.int8(0))],
     {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 18, 1),
    ("convint-u8w-zp", "ConvInteger", [u8(1, 2, 7, 7), const(u8(3, 2, 3, 3)), const(np.uint8(7)), const(np.uint8(128))],
     {"pads": [1, 0, 1, 0]}, 18, 1),
    ("qlmm-u8-i8", "QLinearMatMul", [u8(3, 48), const(np.float32(0.02)), const(np.uint8(120)),
                                     const(i8(48, 5)), const(np.float32(0.01)), const(np.int8(0)),
                                     const(np.float32(0.05)), const(np.uint8(128))], {}, 18, 1),
    ("qlmm-i8-i8", "QLinearMatMul", [i8(2, 3, 32), const(np.float32(0.03)), const(np.int8(-4)),
                                     const(i8(32, 4)), const(np.float32(0.02)), const(np.int8(1)),
                                     const(np.float32(0.5)), const(np.int8(3))], {}, 18, 1),
    ("qlmm-per-col", "QLinearMatMul", [u8(3, 16), const(np.float32(0.02)), const(np.uint8(120)),
                                       const(i8(16, 4)), const(np.array([0.01, 0.02, 0.03, 0.04], np.float32)),
                                       const(np.zeros(4, np.int8)), const(np.float32(0.05)), const(np.uint8(128))],
     {}, 18, 1),
    ("qlconv", "QLinearConv", [u8(1, 3, 9, 9), const(np.float32(0.02)), const(np.uint8(120)),
                               const(i8(4, 3, 3, 3)), const(np.array([0.01, 0.02, 0.005, 0.03], np.float32)),
                               const(np.zeros(4, np.int8)), const(np.float32(0.04)), const(np.uint8(110)),
                               const(R.integers(-500, 500, 4).astype(np.int32))],
     {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 18, 1),
    ("qlconv-i8", "QLinearConv", [i8(1, 2, 6, 6), const(np.float32(0.05)), const(np.int8(-1)),
                                  const(i8(3, 2, 3, 3)), const(np.float32(0.01)), const(np.int8(0)),
                                  const(np.float32(0.2)), const(np.int8(5))], {}, 18, 1),
]


@pytest.mark.parametrize("case", QUANT_CASES, ids=[c[0] for c in QUANT_CASES])
def test_quant_op_matches_ort_exactly(tmp_path, case):
    """Bit for bit against ORT in the integer arithmetic ORT uses on this CPU: exact sums on VNNI and ARM, the
    saturating uint8 x int8 pairs of its AVX2 kernels on x86 without VNNI (emulated by arithmetic="ort-avx2").
    The exact arithmetic is checked against plain integer math on every CPU in test_int8_arith.py."""
    _, op, inputs, attrs, opset, n_out = case
    ref, got = run_both(tmp_path, op, inputs, attrs, opset, n_out, arithmetic=ort_u8s8_arithmetic())
    assert_same(ref, got, exact=True)


def test_matmul_integer_per_row_zero_point(tmp_path):
    """The spec allows an [M] zero point for A; ORT's CPU kernel does not, so check by hand."""
    a, b, zp = u8(4, 16), u8(16, 3), u8(4)
    model, feeds, outs = op_model("MatMulInteger", [a, const(b), const(zp)], {}, 18, 1)
    path = tmp_path / "mmi.onnx"
    onnx.save(model, str(path))
    got = NumpyBackend(FakeBundle(path)).run(feeds)["out0"]
    want = (a.astype(np.int32) - zp.astype(np.int32)[:, None]) @ b.astype(np.int32)
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_rounding_is_half_to_even(tmp_path):
    ref, got = run_both(tmp_path, "QuantizeLinear", [TIES, const(np.float32(1.0)), const(np.int8(0))])
    assert got[0][:9].tolist() == [-2, -2, 0, 0, 2, 2, 4, 126, 127]  # 127.5 -> 128 saturates to 127
    assert got[0][9:].tolist() == [-128, 127, -128, 0]


def test_qdq_weights_fold_to_float(tmp_path):
    """DequantizeLinear of a constant weight is folded at load; the graph then runs one MatMul."""
    w = i8(8, 4)
    nodes = [oh.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]), oh.make_node("MatMul", ["x", "wf"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, [2, 8])],
                      [oh.make_tensor_value_info("y", TP.FLOAT, [2, 4])],
                      initializer=[onh.from_array(w, "w"), onh.from_array(np.float32(0.1), "s"),
                                   onh.from_array(np.int8(2), "z")])
    path = tmp_path / "dq.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 18)]), str(path))
    be = NumpyBackend(FakeBundle(path))
    assert [s.label.split("(")[-1] for s in be._steps] == ["MatMul)"]
    x = f32(2, 8)
    np.testing.assert_allclose(be.run({"x": x})["y"], x @ ((w.astype(np.float32) - 2) * np.float32(0.1)), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# load-time errors
# ---------------------------------------------------------------------------------------
def small_model(tmp_path, nodes=None, name="small.onnx") -> Path:
    nodes = nodes or [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, [1, 4])],
                      [oh.make_tensor_value_info("y", TP.FLOAT, None)],
                      initializer=[onh.from_array(f32(4, 3), "w")])
    path = tmp_path / name
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)]),
              str(path))
    return path


def test_unsupported_ops_all_named_at_load(tmp_path):
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Hardmax", ["h"], ["a"]),
             oh.make_node("FancyAttention", ["a"], ["b"], domain="com.microsoft"),
             oh.make_node("Hardmax", ["b"], ["y"])]
    path = small_model(tmp_path, nodes)
    with pytest.raises(ModelError) as e:
        NumpyBackend(FakeBundle(path))
    assert "Hardmax" in str(e.value) and "com.microsoft:FancyAttention" in str(e.value)
    assert "Hardmax" not in OPS


def test_unsupported_attribute_is_named(tmp_path):
    path = small_model(tmp_path, [oh.make_node("Relu", ["x"], ["y"], alpha=0.5)])
    with pytest.raises(ModelError, match="alpha"):
        NumpyBackend(FakeBundle(path))


def test_dangling_input_is_a_model_error(tmp_path):
    path = small_model(tmp_path, [oh.make_node("Add", ["x", "nowhere"], ["y"])])
    with pytest.raises(ModelError, match="nowhere"):
        NumpyBackend(FakeBundle(path))


def test_typed_tensor_fields_decode(tmp_path):
    """Initializers stored in float_data/int32_data/int64_data/double_data (not raw_data) decode too."""
    arrays = {"f": f32(2, 3), "h": f32(5).astype(np.float16), "i8": i8(4), "u8": u8(2, 2), "b": np.array([True, False]),
              "i32": R.integers(-9, 9, 3).astype(np.int32), "i64": np.array([I64_MIN, -1, I64_MAX], np.int64),
              "d": R.standard_normal(3), "s": np.array(7, np.int64)}
    inits = [oh.make_tensor(k, oh.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.ravel().tolist())
             for k, v in arrays.items()]
    assert not any(t.HasField("raw_data") for t in inits)
    nodes = [oh.make_node("Identity", [k], [f"o_{k}"]) for k in arrays]
    g = oh.make_graph(nodes, "g", [], [onnx.ValueInfoProto(name=f"o_{k}") for k in arrays], initializer=inits)
    m = parse_model(oh.make_model(g).SerializeToString())
    for k, v in arrays.items():
        got = m.graph.initializers[k]
        assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v), k
        assert np.array_equal(got, onh.to_array(next(t for t in inits if t.name == k))), k


def test_tensor_data_must_match_dims():
    for t in (TP(name="w", data_type=TP.FLOAT, dims=[2**40, 2**40], raw_data=b""),  # product wraps in int64
              TP(name="w", data_type=TP.FLOAT, dims=[3], raw_data=b"\0" * 8),
              TP(name="w", data_type=TP.INT64, dims=[2], int64_data=[1, 2, 3])):
        g = oh.make_graph([oh.make_node("Identity", ["w"], ["y"])], "g", [], [onnx.ValueInfoProto(name="y")],
                          initializer=[t])
        with pytest.raises(ModelError, match="initializer 'w'"):
            parse_model(oh.make_model(g).SerializeToString())


def test_truncated_and_corrupt_files_raise_model_error(tmp_path, dev_model):
    data = dev_model.read_bytes()
    cases = {"empty": b"", "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
             "text": b"<html>not a model</html>"}
    for cut in (1, 7, 100, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 1):
        cases[f"cut{cut}"] = data[:cut]
    for name, blob in cases.items():
        p = tmp_path / f"{name}.onnx"
        p.write_bytes(blob)
        with pytest.raises(ModelError):
            NumpyBackend(FakeBundle(p))
    with pytest.raises(ModelError, match="cannot read"):
        NumpyBackend(FakeBundle(tmp_path / "missing.onnx"))


def test_fuzzed_bytes_never_escape_as_other_errors(tmp_path):
    """Every truncation point and random byte damage of a small model either loads or raises ModelError."""
    data = small_model(tmp_path).read_bytes()
    rng = np.random.default_rng(0)
    blobs = [data[:n] for n in range(len(data))]
    for _ in range(300):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), int(rng.integers(1, 4))):
            b[pos] = int(rng.integers(0, 256))
        blobs.append(bytes(b))
    for i, blob in enumerate(blobs):
        p = tmp_path / "fuzz.onnx"
        p.write_bytes(blob)
        try:
            be = NumpyBackend(FakeBundle(p))
        except ModelError:
            continue
        try:  # a damaged model that still loads may produce other numbers, or refuse inputs
            be.run({"x": f32(1, 4)})
        except (ModelError, BadInputError):
            pass
