"""The ARM artifact really runs: under qemu user-mode emulation, with an aarch64 Python that has
only the light runtime (numpy, apache-tvm-ffi, libtvm_runtime.so; no TVM compiler), compared with
ONNX Runtime on x86. The environment is built by scripts/arm-env.sh (cached; ~1-2 min from scratch).
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
ort = pytest.importorskip("onnxruntime")

from edge_slim import targets as T  # noqa: E402
from compile_helpers import compiled, run_in_arm_guest, has_cc, sample_inputs, source_bundle  # noqa: E402

TOL = 1e-4

GUEST = r"""
import sys, time, platform
t0 = time.time()
import numpy as np
from edge_slim.runtime.bundle import open_bundle
from edge_slim.runtime.backends import backend_class
be = backend_class("tvm")(open_bundle(sys.argv[1]), threads=1)
t1 = time.time()
data = np.load(sys.argv[2])
n = len([k for k in data.files if k.startswith("image")])
outs = {}
for i in range(n):
    o = be.run({"image": data[f"image{i}"], "tokens": data[f"tokens{i}"]})
    outs.update({f"{k}{i}": v for k, v in o.items()})
    o = be.run_text(be.encode({"image": data[f"image{i}"]}), {"tokens": data[f"tokens{i}"]})   # image.so + text.so
    outs.update({f"split_{k}{i}": v for k, v in o.items()})
np.savez(sys.argv[3], **outs)
assert "tvm" not in sys.modules, "the guest imported the TVM compiler"
print(f"machine={platform.machine()} load_s={t1 - t0:.2f} total_s={time.time() - t0:.2f}")
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu "
                    "libc6-dev-arm64-cross)")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
def test_arm_artifact_runs_under_qemu_and_matches_x86_ort(tmp_path):
    bundle = compiled("rpi5")
    feeds = list(sample_inputs(2, seed=11))
    np.savez(tmp_path / "in.npz", **{f"{k}{i}": v for i, f in enumerate(feeds) for k, v in f.items()})
    (tmp_path / "guest.py").write_text(GUEST)
    r = run_in_arm_guest(tmp_path / "guest.py", str(bundle), str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "machine=aarch64" in r.stdout, r.stdout
    got = np.load(tmp_path / "out.npz")
    sess = ort.InferenceSession(str(source_bundle() / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for i, f in enumerate(feeds):
        for k, ref in zip(names, sess.run(None, f)):
            worst = max(worst, float(np.abs(got[f"{k}{i}"] - ref).max()), float(np.abs(got[f"split_{k}{i}"] - ref).max()))
    assert worst < TOL, f"aarch64 under qemu (whole graph and image/text parts) vs x86 ORT: max abs diff {worst}"


# ---------------------------------------------------------------- int8 kernels (edge_slim/aot/lower/int8_kernels.py)
ARM_KERNELS = {"arm-sdot": "rpi5", "arm-neon-widen": "rpi4"}
KERNEL_GUEST = r"""
import sys, numpy as np, tvm_ffi
from edge_slim.runtime.backends import tvm_backend
tvm_backend._load_runtime(cuda=False)          # libtvm_runtime, as an app's session would load it
cases = np.load(sys.argv[1])
out = {}
for case in sorted({k.split(":")[0] for k in cases.files}):
    lib = tvm_ffi.load_module(f"{sys.argv[2]}/{case}.so")
    args = [np.array(cases[f"{case}:{i}"], order="C") for i in range(int(cases[f"{case}:n"]))]
    res = np.zeros(tuple(cases[f"{case}:shape"]), np.int32)
    lib["main"](*[tvm_ffi.from_dlpack(a) for a in args], tvm_ffi.from_dlpack(res))
    out[case] = res
np.savez(sys.argv[3], **out)
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
def test_arm_int8_kernels_equal_exact_integer_math_under_qemu(tmp_path):
    """sdot (Pi 5, Orin CPUs) and the NEON widening form (Pi 4) give exact (a - zp) @ w on aarch64, odd
    shapes and the extreme 255 x -128 products included; the libraries hold the instructions."""
    import tvm
    from tvm.support import cc
    from edge_slim.aot.lower import int8_kernels as K
    cases, want = {}, {}
    shapes = [(36, 128, 512), (16, 512, 128), (1, 128, 4), (3, 36, 100), (4, 64, 16)]
    for name, target in ARM_KERNELS.items():
        kern = K.kernels()[name]
        tgt = tvm.target.Target(T.get_target(target).tvm_target(cores=1))
        for j, (m, k, n) in enumerate(shapes):
            rng = np.random.default_rng(j)
            if j == len(shapes) - 1:   # every product 255 x -128 (zp 0): a saturating form would clamp
                a, zp, w = np.full((m, k), 255), 0, np.full((k, n), -128, np.int8)
            else:
                a, zp = rng.integers(0, 256, (m, k)), int(rng.integers(0, 256))
                w = rng.integers(-128, 128, (k, n)).astype(np.int8)
            case = f"{name}-{j}"
            f = K.prim_func(kern, m, k, n).with_attr("global_symbol", "main")
            lib = tvm.compile(tvm.IRModule({"main": f}), target=tgt)
            lib.export_library(str(tmp_path / f"{case}.so"), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
            args = [(a - 128).astype(np.int8), np.array(zp, np.uint8), K.pack_weight(kern, w), K.column_sums(kern, w)]
            cases.update({f"{case}:{i}": v for i, v in enumerate(args)})
            cases[f"{case}:n"], cases[f"{case}:shape"] = np.array(len(args)), np.array([m, n])
            want[case] = K.reference(a, zp, w)
        objdump = shutil.which("aarch64-linux-gnu-objdump")
        if objdump:
            asm = subprocess.run([objdump, "-d", str(tmp_path / f"{name}-0.so")], capture_output=True, text=True).stdout
            assert asm.count(f"\t{kern.instruction}\t") >= 4, f"{name}: no {kern.instruction} in the library"
    np.savez(tmp_path / "cases.npz", **cases)
    (tmp_path / "guest.py").write_text(KERNEL_GUEST)
    r = run_in_arm_guest(tmp_path / "guest.py", str(tmp_path / "cases.npz"), str(tmp_path), str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for case, ref in want.items():
        assert np.array_equal(got[case], ref), case


INT8_GUEST = GUEST.replace('o = be.run_text(be.encode({"image": data[f"image{i}"]}), {"tokens": data[f"tokens{i}"]})'
                           '   # image.so + text.so\n    outs.update({f"split_{k}{i}": v for k, v in o.items()})\n', "")


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
@pytest.mark.parametrize("target", list(ARM_KERNELS.values()))
def test_arm_int8_artifact_uses_the_integer_kernel_and_matches_ort(target, tmp_path):
    """The dynamic-int8 graph compiled for a Pi: its matmuls run on the target's integer kernel (manifest,
    disassembly), and under qemu its answers match ONNX Runtime's on the graph as written."""
    from compile_helpers import int8_graph
    from edge_slim.runtime import bundle as B
    kern = {v: k for k, v in ARM_KERNELS.items()}[target]
    out = compiled(target, "dynamic", split=False)
    flags = B.open_bundle(out).manifest["compile"]["flags"]
    assert flags["int8_kernel"] == kern and flags["int8_matmuls_integer"] >= 20 and flags["int8_dynamic_quantize_fused"] > 0
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        asm = subprocess.run([objdump, "-d", str(out / "model.so")], capture_output=True, text=True).stdout
        instr = {"arm-sdot": "sdot", "arm-neon-widen": "smull"}[kern]
        assert asm.count(f"\t{instr}\t") >= flags["int8_matmuls_integer"]
    feeds = list(sample_inputs(4, seed=3))
    np.savez(tmp_path / "in.npz", **{f"{k}{i}": v for i, f in enumerate(feeds) for k, v in f.items()})
    (tmp_path / "guest.py").write_text(INT8_GUEST)
    r = run_in_arm_guest(tmp_path / "guest.py", str(out), str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(int8_graph("dynamic")), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    agree = 0
    for i, f in enumerate(feeds):
        ref = dict(zip(names, sess.run(None, f)))["answer_logits"]
        err = float(np.abs(got[f"answer_logits{i}"] - ref).max())
        assert err < 0.02 * max(1.0, float(np.abs(ref).max())), err   # as tests/test_compile.py's x86 int8 check
        agree += int(got[f"answer_logits{i}"].argmax() == ref.argmax())
    assert agree >= 3


CONV_GUEST = r"""
import sys
import numpy as np
from edge_slim.runtime.bundle import open_bundle
from edge_slim.runtime.backends import backend_class
data = np.load(sys.argv[2])
out = {k: backend_class("tvm")(open_bundle(f"{sys.argv[1]}/{k}"), threads=1).run({"x": data[k]})["y"] for k in data.files}
np.savez(sys.argv[3], **out)
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
@pytest.mark.parametrize("target", list(ARM_KERNELS.values()))
def test_arm_qdq_conv_runs_as_integer_conv_under_qemu(target, tmp_path):
    """QDQ convs compiled for a Pi run on its integer kernel through im2col (the int8 operand a - 128 and its
    correction): under qemu, equal to exact integer math for a strided padded 3x3, an unpadded 3x3 and a 1x1."""
    import onnx
    from compile_helpers import qdq_conv_model
    from edge_slim.aot.lower.pipeline import compile_model
    cases, want = {}, {}
    for j, (c, o, k, stride, pad) in enumerate([(32, 64, 3, 2, 1), (8, 16, 3, 1, 0), (12, 48, 1, 1, 0)]):
        m, x, want[f"c{j}"] = qdq_conv_model(c, o, k, stride, pad, seed=j)
        onnx.save(m, tmp_path / f"c{j}.onnx")
        r = compile_model(tmp_path / f"c{j}.onnx", target, out=tmp_path / "art" / f"c{j}", split=False)
        assert r["compile"]["flags"]["int8_convs_integer"] == 1
        cases[f"c{j}"] = x
    np.savez(tmp_path / "in.npz", **cases)
    (tmp_path / "guest.py").write_text(CONV_GUEST)
    r = run_in_arm_guest(tmp_path / "guest.py", str(tmp_path / "art"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, rtol=1e-5, atol=1e-4, err_msg=key)
