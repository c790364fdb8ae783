"""The ARM artifact really runs: under qemu user-mode emulation, with an aarch64 Python that has
only the light runtime (numpy, apache-tvm-ffi, libtvm_runtime.so; no TVM compiler), compared with
ONNX Runtime on x86. The environment is built by scripts/arm-env.sh (cached; ~1-2 min from scratch).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
ort = pytest.importorskip("onnxruntime")

from compile_helpers import compiled, has_cc, sample_inputs, source_bundle  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "arm-env.sh"
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


def arm_env() -> dict | None:
    """Build (or reuse) the qemu environment; None with the reason printed if it cannot be had."""
    if shutil.which("bash") is None or not SCRIPT.exists():
        return None
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"qemu aarch64 environment unavailable: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return env


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu "
                    "libc6-dev-arm64-cross)")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
def test_arm_artifact_runs_under_qemu_and_matches_x86_ort(tmp_path):
    env = arm_env()
    bundle = compiled("rpi5")
    feeds = list(sample_inputs(2, seed=11))
    np.savez(tmp_path / "in.npz", **{f"{k}{i}": v for i, f in enumerate(feeds) for k, v in f.items()})
    (tmp_path / "guest.py").write_text(GUEST)
    run_env = {**os.environ, "QEMU_LD_PREFIX": env["QEMU_LD_PREFIX"], "PYTHONPATH": env["PYTHONPATH"],
               "EDGE_SLIM_TVM_RUNTIME": env["EDGE_SLIM_TVM_RUNTIME"], "PYTHONDONTWRITEBYTECODE": "1"}
    guest_py = env["PYTHON"].split()
    r = subprocess.run([*guest_py, str(tmp_path / "guest.py"), str(bundle), str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True, env=run_env, timeout=600)
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
