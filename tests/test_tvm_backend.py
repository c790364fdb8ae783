"""The tvm backend runs compiled bundles with the light runtime (tvm_ffi + libtvm_runtime.so).

Parity with ONNX Runtime fp32 is the oracle: max abs difference below 1e-4 on every output
(measured ~1e-7). The compiled bundle comes from test_compile's session-memoized `compiled()`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np

import pytest

pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
ort = pytest.importorskip("onnxruntime")

from compile_helpers import compiled, has_cc, sample_inputs, source_bundle  # noqa: E402

from edge_slim.errors import ModelError  # noqa: E402
from edge_slim.runtime import bundle as B  # noqa: E402
from edge_slim.runtime.backends import backend_class  # noqa: E402

TOL = 1e-4


def ort_session(threads: int = 1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(source_bundle() / "model.onnx"), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("threads", [1, 2])
def test_parity_with_onnx_runtime(threads):
    be = backend_class("tvm")(B.open_bundle(compiled("x86-64")), threads=threads)
    assert be.name == "tvm"
    sess = ort_session(threads)
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for feeds in sample_inputs(4):
        ref = dict(zip(names, sess.run(None, feeds)))
        got = be.run(feeds)
        assert set(got) == set(names)
        for k in names:
            assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype
            worst = max(worst, float(np.abs(got[k] - ref[k]).max()))
    assert worst < TOL, f"max abs diff {worst}"


def test_runs_without_importing_the_compiler():
    code = ("import sys, numpy as np; from edge_slim.runtime.bundle import open_bundle; "
            "from edge_slim.runtime.backends import backend_class; "
            f"be = backend_class('tvm')(open_bundle({str(compiled('x86-64'))!r}), threads=1); "
            "o = be.run({'image': np.zeros((1,3,96,96), np.float32), 'tokens': np.zeros((1,16), np.int64)}); "
            "assert o['answer_logits'].shape == (1, 24); "
            "heavy = [m for m in ('tvm', 'torch', 'onnx') if m in sys.modules]; assert not heavy, heavy; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_threads_are_two_threads_on_x86():
    """TVM sizes its pool to half the CPUs on x86 (assuming SMT): on a 2-CPU host threads=2 ran 1 thread."""
    code = ("import numpy as np, tvm_ffi; from edge_slim.runtime.bundle import open_bundle; "
            "from edge_slim.runtime.backends import backend_class; "
            f"be = backend_class('tvm')(open_bundle({str(compiled('x86-64'))!r}), threads=2); "
            "be.run({'image': np.zeros((1,3,96,96), np.float32), 'tokens': np.zeros((1,16), np.int64)}); "
            "print('threads', tvm_ffi.get_global_func('runtime.NumThreads')())")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "threads 2" in out.stdout, (out.stdout, out.stderr)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_setting_threads_leaves_the_callers_cpu_mask_alone():
    """TVM pins the thread that configures its pool; an app's later threads would inherit one core."""
    before = os.sched_getaffinity(0)
    for n in (2, 1):
        be = backend_class("tvm")(B.open_bundle(compiled("x86-64")), threads=n)
        be.run(next(sample_inputs(1)))
        assert os.sched_getaffinity(0) == before, n


def test_thread_safe():
    be = backend_class("tvm")(B.open_bundle(compiled("x86-64")), threads=1)
    feeds = list(sample_inputs(4, seed=7))
    want = [be.run(f)["answer_logits"] for f in feeds]
    errors = []

    def worker(i):
        for _ in range(5):
            got = be.run(feeds[i])["answer_logits"]
            if not np.array_equal(got, want[i]):
                errors.append(i)
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tampered_artifact_is_refused_before_dlopen(tmp_path):
    d = _copy(compiled("x86-64"), tmp_path / "b")
    with open(d / "model.so", "r+b") as f:
        f.seek(4096)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelError, match="checksum mismatch for model.so"):
        B.open_bundle(d)


def test_missing_cpu_features_are_refused(tmp_path):
    d = _copy(compiled("x86-64"), tmp_path / "b")
    m = json.loads((d / B.MANIFEST).read_text())
    m["target"]["cpu_flags"] = ["avx2", "no_such_isa_extension"]
    B.write_manifest(d, {k: v for k, v in m.items() if k != "files"})
    with pytest.raises(ModelError, match="no_such_isa_extension"):
        backend_class("tvm")(B.open_bundle(d))


def test_bad_inputs_are_reported():
    from edge_slim.errors import BadInputError
    be = backend_class("tvm")(B.open_bundle(compiled("x86-64")))
    with pytest.raises(BadInputError, match="missing input 'tokens'"):
        be.run({"image": np.zeros((1, 3, 96, 96), np.float32)})
    with pytest.raises(BadInputError, match=r"shape \[1, 3, 64, 64\]"):
        be.run({"image": np.zeros((1, 3, 64, 64), np.float32), "tokens": np.zeros((1, 16), np.int64)})


def test_onnx_bundle_is_not_a_tvm_artifact():
    with pytest.raises(ModelError, match="compiled bundles"):
        backend_class("tvm")(B.open_bundle(source_bundle()))


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler")
def test_aarch64_artifact_is_refused_on_x86_naming_both():
    import platform
    if platform.machine() != "x86_64":
        pytest.skip("this check is for an x86-64 host")
    with pytest.raises(ModelError, match=r"built for aarch64 \(target rpi5\); this host is x86-64"):
        backend_class("tvm")(B.open_bundle(compiled("rpi5")))


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("cuda"), reason="needs nvcc")
def test_cuda_artifact_is_refused_without_a_driver():
    from edge_slim.runtime.backends.tvm_backend import has_cuda_driver
    if has_cuda_driver():
        pytest.skip("this host has a CUDA driver")
    with pytest.raises(ModelError, match=r"CUDA artifact \(target cuda, sm_80\).*no CUDA driver"):
        backend_class("tvm")(B.open_bundle(compiled("cuda")))


def test_out_of_range_token_ids_do_not_crash():
    """Gathers with run-time indices are compiled with clipping: a bad id gives a wrong answer,
    not a segfault."""
    be = backend_class("tvm")(B.open_bundle(compiled("x86-64")))
    o = be.run({"image": np.zeros((1, 3, 96, 96), np.float32), "tokens": np.full((1, 16), 10**6, np.int64)})
    assert np.isfinite(o["answer_logits"]).all()
