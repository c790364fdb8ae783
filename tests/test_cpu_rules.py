"""The tuning-free CPU schedule rules (edge_slim/aot/lower/cpu_rules.py) and the graph rewrites that feed them
(graph_passes.py): the shapes real models have, each checked against an independent oracle (NumPy or ONNX
Runtime)."""
from __future__ import annotations

import numpy as np
import pytest

from edge_slim import targets as T

tvm = pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
from edge_slim.aot.lower import cpu_rules as R  # noqa: E402
from compile_helpers import conv_reference  # noqa: E402


def _conv_func(c, o, hw, k, stride, pad):
    from tvm import te, topi
    x = te.placeholder((1, c, hw, hw), name="x")
    w = te.placeholder((o, c, k, k), name="w")
    y = topi.nn.conv2d_nchw(x, w, stride, pad, 1)
    return te.create_prim_func([x, w, y]).with_attr("layout_free_buffers", [1])


@pytest.mark.parametrize("c,o,hw,k,stride,pad", [(16, 32, 10, 3, 1, 1), (24, 40, 20, 1, 1, 0), (8, 16, 40, 3, 1, 1),
                                                 (16, 24, 12, 3, 2, 1)],
                         ids=["3x3-10px", "1x1-20px", "3x3-40px", "3x3s2-12px"])
def test_contraction_schedules_stride1_convs_with_narrow_rows(c, o, hw, k, stride, pad):
    """Rows of 10 or 20 pixels fit no full vector: the register tile goes along the output channels (weight
    repacked) instead of the rule giving up (it did for 10-wide rows: YOLOv8n's 10x10 convs ran unscheduled,
    4.7x slower). The scheduled conv equals float64 math."""
    tgt = tvm.target.Target(T.get_target("x86-64").tvm_target(cores=1))
    sch = R.Contraction(R.Isa(256, 16)).apply(_conv_func(c, o, hw, k, stride, pad), tgt, False)
    assert sch is not None
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=tgt)
    rng = np.random.default_rng(c + o + hw)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    want = conv_reference(x, w, stride, pad)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(want.shape, np.float32), dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)


def test_depthwise_conv_tile_has_rows():
    """A depthwise conv (every axis reads the input; the weight is broadcast along rows and columns) gets a
    register tile of several rows, each loading its own input vectors; the result equals float64 math."""
    from tvm import te, topi
    c, hw, k = 24, 20, 5
    x = te.placeholder((1, c, hw, hw), name="x")
    w = te.placeholder((c, 1, k, k), name="w")
    f = te.create_prim_func([x, w, topi.nn.depthwise_conv2d_nchw(x, w, 1, 2, 1)]).with_attr("layout_free_buffers", [1])
    tgt = tvm.target.Target(T.get_target("x86-64").tvm_target(cores=1))
    sch = R.Contraction(R.Isa(256, 16)).apply(f, tgt, False)
    assert sch is not None
    assert any(str(inst.kind.name) == "Unroll" for inst in sch.trace.insts) and "T.unroll(10)" in sch.mod.script()
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=tgt)
    rng = np.random.default_rng(7)
    xv = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    wv = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    xp = np.pad(xv.astype(np.float64), ((0, 0), (0, 0), (2, 2), (2, 2)))
    want = np.zeros((1, c, hw, hw))
    for i in range(k):
        for j in range(k):
            want[0] += xp[0, :, i:i + hw, j:j + hw] * wv[:, 0, i, j, None, None]
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(want.shape, np.float32), dev)
    lib["main"](tvm.runtime.tensor(xv, dev), tvm.runtime.tensor(wv, dev), out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)


def test_inner_axis_softmax_and_odd_width_matmul_match_onnx_runtime(tmp_path):
    """softmax over axis 1 (moved last by softmax_last_axis_pass) and a matmul to 100 columns (padded to 112
    by pad_matmul_columns_pass, then sliced) give ONNX Runtime's outputs."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime import bundle as B
    from edge_slim.runtime.backends import backend_class
    rng = np.random.default_rng(3)
    w = rng.standard_normal((30, 100)).astype(np.float32)
    b = rng.standard_normal(100).astype(np.float32)
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=1),
             helper.make_node("MatMul", ["s", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 30])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 100])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, tmp_path / "g.onnx")
    compile_model(tmp_path / "g.onnx", "x86-64", out=tmp_path / "c", split=False)
    x = (rng.standard_normal((1, 16, 4, 30)) * 3).astype(np.float32)
    got = backend_class("tvm")(B.open_bundle(tmp_path / "c"), threads=1).run({"x": x})["y"]
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sigmoid_vectorizes_without_libm(tmp_path):
    """SiLU (x * sigmoid(x), after every YOLOv8 conv) compiles to fast_exp: float64 math's values (as close
    as ONNX Runtime's), and no
    scalar expf call left in the library (sigmoid legalized as one op called expf per element)."""
    import shutil
    import subprocess
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime import bundle as B
    from edge_slim.runtime.backends import backend_class
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    g = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 20, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 20, 20])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, tmp_path / "silu.onnx")
    compile_model(tmp_path / "silu.onnx", "x86-64", out=tmp_path / "c", split=False)
    x = (np.random.default_rng(0).standard_normal((1, 8, 20, 20)) * 30).astype(np.float32)
    got = backend_class("tvm")(B.open_bundle(tmp_path / "c"), threads=1).run({"x": x})["y"]
    x64 = x.astype(np.float64)
    exact = x64 / (1 + np.exp(-x64))
    ort_y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=2e-6)   # ORT's own sigmoid is off by up to 1.3e-6
    np.testing.assert_allclose(ort_y, exact, rtol=1e-5, atol=2e-6)
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("no objdump (binutils)")
    asm = subprocess.run([objdump, "-d", str(tmp_path / "c" / "model.so")], capture_output=True, text=True).stdout
    assert "expf" not in asm
