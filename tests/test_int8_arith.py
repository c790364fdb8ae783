"""uint8 x int8 arithmetic on every x86 CPU.

ONNX Runtime's AVX2 kernels (x86 without VNNI) add pairs of uint8 x int8 products in a saturating int16;
VNNI, ARM, TVM and the NumPy backend sum exactly. These tests hold each side to its own oracle:
- the NumPy backend's exact arithmetic against plain int64 integer math (on every CPU),
- ONNX Runtime against the NumPy backend in the arithmetic ORT uses here (the probe says which),
- 7-bit weights ([-64, 64], `edge-slim quantize`'s default) give identical answers in both arithmetics.
`test_int8_tests_pass_on_an_avx2_only_cpu` reruns the int8 tests of this file and of test_numpy_backend.py
under `qemu-x86_64-static -cpu Haswell`, which runs ONNX Runtime's AVX2 code path on any x86 machine, and
checks that they ran there (the probe must find saturating pairs) and passed.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_slim.errors import ModelError
from edge_slim.runtime.backends.int8_avx2 import EXACT_WEIGHT_MAX, saturating_pairs_matmul
from edge_slim.runtime.backends.numpy_backend import NumpyBackend

ROOT = Path(__file__).resolve().parent.parent
R = np.random.default_rng(99)


def u8(*s):
    return R.integers(0, 256, s).astype(np.uint8)


def i8(*s, lim=128):
    return R.integers(-lim, lim, s).astype(np.int8)


# -- the arithmetic itself ------------------------------------------------------------------------
def test_pairs_saturate_as_vpmaddubsw_does():
    a = np.array([[255, 255, 255, 255, 7]], np.uint8)
    b = np.array([[127], [127], [-128], [-128], [3]], np.int8)
    # pairs (k, k+1): 2 x 255 x 127 = 64,770 -> 32,767; 2 x 255 x -128 = -65,280 -> -32,768; odd K: 7 x 3 + 0
    assert saturating_pairs_matmul(a, b).tolist() == [[32767 - 32768 + 21]]
    assert (a.astype(np.int64) @ b.astype(np.int64)).tolist() == [[64770 - 65280 + 21]]


def _pairs_by_brute_force(a, b):
    a, b = a.astype(np.int64), b.astype(np.int64)
    if a.shape[-1] % 2:
        a, b = np.concatenate([a, np.zeros((*a.shape[:-1], 1), np.int64)], -1), np.concatenate([b, 0 * b[:1]], 0)
    return np.clip(a[..., 0::2, None] * b[0::2] + a[..., 1::2, None] * b[1::2], -32768, 32767).sum(-2)


@pytest.mark.parametrize("shape", [(3, 64, 16), (2, 5, 27, 7), (40, 128, 9)])
def test_fast_pairs_equal_brute_force(shape):
    *m, k, n = shape
    a, b = u8(*m, k), i8(k, n)
    a.reshape(-1, k)[:2] = 255  # rows where every hot pair saturates
    got = saturating_pairs_matmul(a, b)
    assert got.dtype == np.int32 and np.array_equal(got, _pairs_by_brute_force(a, b))


def test_7bit_weights_never_saturate():
    """The worst case for every pair (255 x +-64 twice) and random data: saturating pairs == exact sums."""
    a = np.concatenate([np.full((4, 64), 255, np.uint8), u8(60, 64)])
    for lim in (EXACT_WEIGHT_MAX, EXACT_WEIGHT_MAX + 1):
        b = np.concatenate([np.full((64, 2), lim, np.int8), np.full((64, 2), -lim, np.int8),
                            R.integers(-lim, lim + 1, (64, 12)).astype(np.int8)], 1)
        same = np.array_equal(saturating_pairs_matmul(a, b), a.astype(np.int32) @ b.astype(np.int32))
        assert same == (lim <= EXACT_WEIGHT_MAX), lim


# -- single ops: exact vs integer math, ORT vs its own arithmetic ---------------------------------
def _exact_conv(x, w, x_zp, pads, strides):
    """Direct convolution in int64: the independent oracle for (QLinear)Conv accumulators."""
    xp = np.pad(x.astype(np.int64) - int(x_zp), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    m, c, kh, kw = w.shape
    oh = (xp.shape[2] - kh) // strides[0] + 1
    ow = (xp.shape[3] - kw) // strides[1] + 1
    out = np.zeros((x.shape[0], m, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + strides[0] * oh:strides[0], j:j + strides[1] * ow:strides[1]]
            out += np.einsum("nchw,mc->nmhw", patch, w[:, :, i, j].astype(np.int64))
    return out


def _requant(acc, mult, zp, dtype):
    info = np.iinfo(dtype)
    return np.clip(np.rint(acc.astype(np.float64) * mult) + int(zp), info.min, info.max).astype(dtype)


# name, op, inputs (the first is fed, the rest are constants), attrs, exact int64/float64 oracle
def _cases():
    a, b, za = u8(2, 5, 64), i8(64, 7), np.uint8(131)
    a2, b2 = u8(4, 27), i8(27, 5)
    qa, qb = u8(3, 48), i8(48, 5)
    ws = np.array([0.01, 0.02, 0.03, 0.04, 0.05], np.float32)
    x, w = u8(1, 32, 9, 9), i8(8, 32, 3, 3)
    x3, w3 = u8(1, 3, 11, 11), i8(4, 3, 3, 3)
    wsc = np.linspace(0.005, 0.02, 8).astype(np.float32)
    ys = np.float32(0.5)

    def qlconv(xx, ww, sc, pads, strides):
        return ("QLinearConv", [xx, np.float32(0.02), np.uint8(120), ww, sc, np.zeros(len(sc), np.int8), ys,
                                np.uint8(128)], {"pads": pads, "strides": strides},
                lambda: _requant(_exact_conv(xx, ww, 120, pads, strides),
                                 (np.float64(0.02) * sc.astype(np.float64) / ys).reshape(1, -1, 1, 1), 128, np.uint8))
    return {
        "mmi-zp": ("MatMulInteger", [a, b, za], {}, lambda: (a.astype(np.int64) - 131) @ b.astype(np.int64)),
        "mmi-odd-k": ("MatMulInteger", [a2, b2], {}, lambda: a2.astype(np.int64) @ b2.astype(np.int64)),
        "qlmm-per-col": ("QLinearMatMul", [qa, np.float32(0.02), np.uint8(120), qb, ws, np.zeros(5, np.int8),
                                           np.float32(0.05), np.uint8(128)], {},
                         lambda: _requant((qa.astype(np.int64) - 120) @ qb.astype(np.int64),
                                          np.float64(0.02) * ws.astype(np.float64) / 0.05, 128, np.uint8)),
        "qlconv": qlconv(x, w, wsc, [1, 1, 1, 1], [1, 1]),
        "qlconv-rgb-stride2": qlconv(x3, w3, wsc[:4], [1, 1, 1, 1], [2, 2]),
    }


CASES = _cases()


def _model(tmp_path, op, inputs, attrs):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper
    feed = inputs[0]
    inits = [numpy_helper.from_array(np.asarray(v), f"c{i}") for i, v in enumerate(inputs[1:], 1)]
    node = helper.make_node(op, ["x"] + [i.name for i in inits], ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(feed.dtype),
                                                                      feed.shape)],
                          [onnx.ValueInfoProto(name="y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    path = tmp_path / f"{op}.onnx"
    onnx.save(m, str(path))
    return path, {"x": feed}


class _Bundle:
    def __init__(self, path):
        self.model_path, self.manifest, self.path = path, {"format": "onnx"}, path.parent


def _numpy(path, feeds, arithmetic):
    return NumpyBackend(_Bundle(path), arithmetic=arithmetic).run(feeds)["y"]


@pytest.mark.parametrize("name", list(CASES))
def test_exact_arithmetic_is_integer_math(tmp_path, name):
    op, inputs, attrs, oracle = CASES[name]
    path, feeds = _model(tmp_path, op, inputs, attrs)
    got = _numpy(path, feeds, "exact")
    want = oracle()
    assert got.dtype == (np.int32 if op == "MatMulInteger" else np.uint8)
    assert np.array_equal(got.astype(np.int64), want.astype(np.int64))


@pytest.mark.parametrize("name", list(CASES))
def test_emulation_saturates_8bit_weights_and_not_7bit(tmp_path, name):
    """With full-range weights on extreme activations the emulation must differ from exact math (it is not exact
    by accident); with weights clipped to [-64, 64] it must equal it."""
    op, inputs, attrs, _ = CASES[name]
    hot = [np.full_like(inputs[0], 255)] + list(inputs[1:])
    widx = 1 if op == "MatMulInteger" else 3
    hot[widx] = np.where(inputs[widx] >= 0, 127, -128).astype(np.int8)
    path, feeds = _model(tmp_path, op, hot, attrs)
    emulated, exact = _numpy(path, feeds, "ort-avx2"), _numpy(path, feeds, "exact")
    assert emulated.dtype == exact.dtype and not np.array_equal(emulated, exact)
    cool = list(inputs)
    cool[widx] = np.clip(inputs[widx], -EXACT_WEIGHT_MAX, EXACT_WEIGHT_MAX).astype(np.int8)
    path, feeds = _model(tmp_path, op, cool, attrs)
    assert np.array_equal(_numpy(path, feeds, "ort-avx2"), _numpy(path, feeds, "exact"))


def test_unemulated_forms_are_refused(tmp_path):
    path, feeds = _model(tmp_path, "MatMulInteger", [u8(2, 8), i8(8, 3), np.uint8(1), np.int8(3)], {})
    with pytest.raises(ModelError, match="zero point 0"):
        _numpy(path, feeds, "ort-avx2")


def test_unknown_arithmetic_is_a_clear_error(tmp_path):
    from edge_slim.errors import BadInputError
    path, _ = _model(tmp_path, "MatMulInteger", [u8(2, 8), i8(8, 3)], {})
    with pytest.raises(BadInputError, match="ort-avx2"):
        NumpyBackend(_Bundle(path), arithmetic="avx2")


ort = pytest.importorskip("onnxruntime")
from edge_slim.aot.quantize.int8_arith import ort_u8s8_arithmetic  # noqa: E402


def test_probe_knows_this_cpus_arithmetic():
    """The probe raises if ORT matches neither form; under the emulated Haswell the parent demands ort-avx2."""
    got = ort_u8s8_arithmetic()
    assert got in ("exact", "ort-avx2")
    want = os.environ.get("EDGE_SLIM_EXPECT_ORT_ARITHMETIC")
    if want:
        assert got == want


def _ort(path, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("extreme", [False, True])
def test_ort_matches_its_own_arithmetic(tmp_path, name, extreme):
    op, inputs, attrs, _ = CASES[name]
    if extreme:  # every pair saturates in the AVX2 form
        inputs = [np.full_like(inputs[0], 255)] + list(inputs[1:])
    path, feeds = _model(tmp_path, op, inputs, attrs)
    ref, got = _ort(path, feeds), _numpy(path, feeds, ort_u8s8_arithmetic())
    assert got.dtype == ref.dtype and np.array_equal(ref, got)


def test_shipped_int8_bundle_runs_in_orts_arithmetic():
    """The shipped int8 graph (fused by ORT's optimizer into DynamicQuantizeMatMul) computes what the NumPy
    backend computes in ORT's arithmetic: exactly on most inputs (float reductions may round a value into a
    neighbouring quantization step now and then), closely on all of them."""
    import edge_slim
    from edge_slim.runtime import bundle as B
    from edge_slim.runtime.backends.ort_backend import OrtBackend
    from edge_slim.scenes.feeds import scene_feeds
    b = B.open_bundle(edge_slim.shipped("int8"))
    feeds = scene_feeds(edge_slim.load(precision="int8", backend="numpy"), 2, seed=3)
    o, n = OrtBackend(b, threads=1), NumpyBackend(b, arithmetic=ort_u8s8_arithmetic())
    diffs = [max(float(np.abs(r[k] - g[k]).max()) for k in r) for r, g in ((o.run(f), n.run(f)) for f in feeds)]
    assert sum(d < 1e-4 for d in diffs) >= len(diffs) / 2, diffs
    assert max(diffs) < 0.5, diffs


# -- the same tests on an AVX2-only CPU -----------------------------------------------------------
QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
CHILD_TESTS = ["tests/test_int8_arith.py", "tests/test_numpy_backend.py::test_quant_op_matches_ort_exactly",
               "tests/test_numpy_backend.py::test_dynamic_int8_model_parity",
               "tests/test_numpy_backend.py::test_matmul_integer_per_row_zero_point"]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="emulates an x86 CPU model")
@pytest.mark.skipif(os.environ.get("EDGE_SLIM_EXPECT_ORT_ARITHMETIC") is not None, reason="already the emulated run")
def test_int8_tests_pass_on_an_avx2_only_cpu(dev_model):
    """Rerun the int8 tests under qemu's Haswell CPU model (AVX2, no AVX-512, no VNNI): ONNX Runtime takes its
    AVX2 kernels there. The probe must find saturating pairs, or the rerun proved nothing."""
    if QEMU is None:
        pytest.fail("qemu-x86_64-static is missing: scripts/dev-setup.sh installs qemu-user-static")
    env = {**os.environ, "EDGE_SLIM_EXPECT_ORT_ARITHMETIC": "ort-avx2", "EDGE_SLIM_DEV_MODEL": str(dev_model),
           "QEMU_CPU": "Haswell", "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-W", "ignore::FutureWarning", *CHILD_TESTS,
                        "--deselect", "tests/test_int8_arith.py::test_int8_tests_pass_on_an_avx2_only_cpu"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = p.stdout + "\n".join(line for line in p.stderr.splitlines() if "TCG doesn't support" not in line)
    assert p.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    summary = [line for line in out.splitlines() if " passed" in line][-1]
    assert passed and int(passed.group(1)) >= 50 and "skipped" not in summary, out[-3000:]
