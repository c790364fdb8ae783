"""Integer kernels of int8 artifacts (edge_slim/aot/int8_kernels.py): each equals exact integer math, never
saturates, and compiled int8 x86 artifacts use them (vpmaddwd / vpdpbusd in the library)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from edge_slim import targets as T
from edge_slim.errors import ModelError

tvm = pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
from edge_slim.aot import int8_kernels as K  # noqa: E402

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
    args = [_operand(kern, a, zp)] + ([np.array(zp, np.int32)] if kern.corrected else []) + [K.pack_weight(kern, w)]
    args += [K.column_sums(kern, w)] if kern.corrected else []
    out = tvm.runtime.tensor(np.zeros((m, w.shape[1]), np.int32), dev)
    lib["main"](*[tvm.runtime.tensor(x, dev) for x in args], out)
    return out.numpy()


@pytest.mark.parametrize("name", K.KERNEL_NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_equals_exact_integer_math(name, shape):
    kern = K.kernels()[name]
    m, k, n = shape
    rng = np.random.default_rng(sum(shape))
    a, zp = rng.integers(0, 256, (m, k)), int(rng.integers(0, 256))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    assert np.array_equal(_run(kern, a, zp, w), K.reference(kern, a, zp, w))


@pytest.mark.parametrize("name", K.KERNEL_NAMES)
def test_extreme_products_do_not_saturate(name):
    """255 x -128 in every pair: vpmaddubsw would clamp each pair at -32,768; these kernels must not."""
    kern = K.kernels()[name]
    a, w = np.full((4, 64), 255), np.full((64, 16), -128, np.int8)
    got = _run(kern, a, 0, w)
    assert (got == -255 * 128 * 64).all()


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
    from compile_helpers import compiled
    from edge_slim.runtime import bundle as B
    out = compiled("x86-64", "dynamic")
    flags = B.open_bundle(out).manifest["compile"]["flags"]
    assert flags["int8_kernel"] == "x86-avx2-madd" and flags["int8_matmuls_integer"] >= 20
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("no objdump (binutils)")
    asm = subprocess.run([objdump, "-d", str(out / "model.so")], capture_output=True, text=True).stdout
    assert asm.count("vpmaddwd") >= flags["int8_matmuls_integer"]
    assert asm.count("vpmulld") < asm.count("vpmaddwd") / 4
