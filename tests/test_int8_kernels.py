"""Integer kernels of int8 artifacts (edge_slim/aot/lower/int8_kernels.py): each equals exact integer math, never
saturates, and compiled int8 x86 artifacts use them (vpmaddwd / vpdpbusd in the library)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from edge_slim import targets as T
from edge_slim.errors import ModelError

tvm = pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
from edge_slim.aot.lower import int8_kernels as K  # noqa: E402

TARGET = {"x86-avx2-madd": "x86-64", "x86-avx512-madd": "x86-64-avx512", "x86-vnni": "x86-64-vnni"}
SHAPES = [(36, 128, 512), (16, 512, 128), (1, 128, 4), (16, 128, 24), (1, 128, 1), (3, 36, 100)]


def _operand(kern, a, zp):
    return (a.astype(np.int16) - zp).astype(np.int16) if kern.act_dtype == "int16" else a.astype(np.uint8)


def _run(kern, a, zp, w):
    tgt = T.get_target(TARGET[kern.name])
    missing = set(tgt.cpu_flags) - T.cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))}")
    m, k = a.shape
    f = K.prim_func(kern, m, k, w.shape[1]).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": f}), target=tvm.target.Target(tgt.tvm_target(cores=1)))
    dev = tvm.cpu()
    args = [_operand(kern, a, zp)] + ([np.array(zp, np.uint8)] if kern.corrected else []) + [K.pack_weight(kern, w)]
    args += [K.column_sums(kern, w)] if kern.corrected else []
    out = tvm.runtime.tensor(np.zeros((m, w.shape[1]), np.int32), dev)
    lib["main"](*[tvm.runtime.tensor(x, dev) for x in args], out)
    return out.numpy()


@pytest.mark.parametrize("name", list(TARGET))   # x86, run here; ARM: tests/test_arm_qemu.py
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_equals_exact_integer_math(name, shape):
    kern = K.kernels()[name]
    m, k, n = shape
    rng = np.random.default_rng(sum(shape))
    a, zp = rng.integers(0, 256, (m, k)), int(rng.integers(0, 256))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    assert np.array_equal(_run(kern, a, zp, w), K.reference(a, zp, w))


@pytest.mark.parametrize("name", list(TARGET))   # x86, run here; ARM: tests/test_arm_qemu.py
def test_extreme_products_do_not_saturate(name):
    """255 x -128 in every pair: vpmaddubsw would clamp each pair at -32,768; these kernels must not."""
    kern = K.kernels()[name]
    a, w = np.full((4, 64), 255), np.full((64, 16), -128, np.int8)
    got = _run(kern, a, 0, w)
    assert (got == -255 * 128 * 64).all()


def _dynamic_quantize_linear_ort(x):
    """ONNX Runtime's DynamicQuantizeLinear of x -> (q, scale, zero point): the oracle of dynamic_quantize."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "dql",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, list(x.shape)),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                           helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("act_dtype", ["int16", "uint8", "int8"])
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("n", [4608, 2048, 100, 5])
@pytest.mark.parametrize("sign", ["mixed", "positive", "negative"])
def test_dynamic_quantize_equals_onnx_runtime(act_dtype, lanes, n, sign):
    """One dynamic_quantize kernel gives ONNX Runtime's DynamicQuantizeLinear, bit for bit: scale, zero point
    and the quantized tensor (as q, q - zp for the int16 kernels, q - 128 for ARM's), tails and clipped min/max included."""
    x = np.random.default_rng(n + lanes).normal(size=n).astype(np.float32) * 3
    x = np.abs(x) if sign == "positive" else -np.abs(x) if sign == "negative" else x
    f = K.dynamic_quantize_func(n, lanes, act_dtype).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": f}), target=tvm.target.Target(T.get_target("x86-64").tvm_target(cores=1)))
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.zeros(n, act_dtype), dev)
    s, z = tvm.runtime.tensor(np.zeros((), np.float32), dev), tvm.runtime.tensor(np.zeros((), np.uint8), dev)
    lib["main"](tvm.runtime.tensor(x, dev), a, s, z)
    want_q, want_s, want_z = _dynamic_quantize_linear_ort(x)
    assert s.numpy().tobytes() == np.float32(want_s).tobytes() and int(z.numpy()) == int(want_z)
    want_a = {"uint8": want_q, "int16": want_q.astype(np.int16) - np.int16(want_z),
              "int8": (want_q.astype(np.int16) - 128).astype(np.int8)}[act_dtype]
    assert np.array_equal(a.numpy(), want_a)


def test_kernel_names_match_the_target_validation():
    assert T.INT8_KERNELS == K.KERNEL_NAMES == tuple(K.kernels())


def test_packed_layout_holds_every_weight_once():
    kern = K.kernels()["x86-avx2-madd"]
    w = np.arange(6 * 20).reshape(6, 20).astype(np.int8)
    p = K.pack_weight(kern, w).reshape(-1, 3, kern.lanes, kern.group)   # [NP/L, K/G, L, G]
    back = p.transpose(1, 3, 0, 2).reshape(6, -1)[:, :20]
    assert np.array_equal(back, w) and p.size == 6 * K.padded_n(kern, 20)


def test_unknown_int8_kernel_is_rejected(tmp_path):
    good = (T.data_dir("targets") / "x86-64.toml").read_text()
    p = tmp_path / "x86-64.toml"
    p.write_text(good.replace('int8_kernel = "x86-avx2-madd"', 'int8_kernel = "x86-magic"'))
    with pytest.raises(ModelError, match="int8_kernel must be one of"):
        T.load_target_file(p)


@pytest.mark.slow
def test_int8_artifact_multiplies_with_vpmaddwd():
    """The shipped int8 form compiled for x86-64: its matmuls run on the kernel (manifest flags), the library
    holds vpmaddwd, and int32 multiplies (vpmulld) are left only where a matmul does not fit the kernel."""
    from compile_helpers import compiled, int8_graph
    from edge_slim.runtime import bundle as B
    out = compiled("x86-64", "dynamic")
    flags = B.open_bundle(out).manifest["compile"]["flags"]
    assert flags["int8_kernel"] == "x86-avx2-madd" and flags["int8_matmuls_integer"] >= 20
    import onnx
    dql = sum(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(int8_graph("dynamic"))).graph.node)
    assert flags["int8_dynamic_quantize_fused"] == dql > 0    # every activation quantized by one kernel
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("no objdump (binutils)")
    asm = subprocess.run([objdump, "-d", str(out / "model.so")], capture_output=True, text=True).stdout
    assert asm.count("vpmaddwd") >= flags["int8_matmuls_integer"]
    assert asm.count("vpmulld") < asm.count("vpmaddwd") / 4


@pytest.mark.parametrize("target", ["x86-64", "x86-64-avx512", "x86-64-vnni"])
@pytest.mark.parametrize("c,o,k,stride,pad", [(32, 64, 3, 2, 1), (8, 16, 3, 1, 0), (12, 48, 1, 1, 0)],
                         ids=["3x3s2p1", "3x3s1p0", "1x1"])
def test_qdq_conv_runs_as_integer_conv(tmp_path, target, c, o, k, stride, pad):
    """A QDQ conv compiled for an int8_kernel target becomes im2col + the integer kernel (manifest flag), with
    the exact integer sums: equal to exact math up to the one float multiply, closer than the fp32 conv."""
    import onnx
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime import bundle as B
    from edge_slim.runtime.backends import backend_class
    tgt = T.get_target(target)
    missing = set(tgt.cpu_flags) - T.cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))}")
    from compile_helpers import qdq_conv_model
    m, x, want = qdq_conv_model(c, o, k, stride, pad, seed=c + o + k)
    onnx.save(m, tmp_path / "conv.onnx")
    out = compile_model(tmp_path / "conv.onnx", target, out=tmp_path / "c", split=False)
    assert out["compile"]["flags"]["int8_convs_integer"] == 1
    got = backend_class("tvm")(B.open_bundle(tmp_path / "c"), threads=1).run({"x": x})["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
