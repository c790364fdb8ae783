"""Compiled SlimPajama artifacts shared by the TVM test modules (test_compile, test_tvm_backend, test_arm_qemu).

Each model+target is compiled once per test session (`compiled()` is memoized). The source is the shipped
bundle when it exists, else a random-init SlimPajama exported with torch (same graph structure). The
modules that use these skip themselves when apache-tvm is not installed.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edge_slim import targets as T
from edge_slim.runtime import bundle as B

WORK = Path(tempfile.mkdtemp(prefix="edge-slim-test-compile-"))
atexit.register(shutil.rmtree, WORK, True)
ELF_X86, ELF_AARCH64 = 62, 183
FATBIN_MAGIC = (0xBA55ED50).to_bytes(4, "little")


def has_cc(target: str) -> bool:
    return T.toolchain_status(T.get_target(target))["ready"]


@functools.lru_cache(maxsize=None)
def source_bundle() -> Path:
    """$EDGE_SLIM_TEST_BUNDLE, else the shipped SlimPajama-Tiny bundle, else a random-init one
    exported here (once)."""
    import os
    for cand in (os.environ.get("EDGE_SLIM_TEST_BUNDLE"), B.default_model_dir()):
        if cand and (Path(cand) / B.MANIFEST).exists():
            return Path(cand)
    torch = pytest.importorskip("torch", reason="no shipped bundle and no torch to export one")
    from edge_slim.aot.model.export import export_bundle
    from edge_slim.aot.model.slimpajama import Config, SlimPajama
    torch.manual_seed(0)
    export_bundle(SlimPajama(Config()).eval(), WORK / "src-bundle")
    return WORK / "src-bundle"


@functools.lru_cache(maxsize=None)
def int8_graph(form: str) -> Path:
    """An int8 SlimPajama graph: 'dynamic' (ORT quantize_dynamic: DynamicQuantizeLinear +
    MatMulInteger) or 'weights' (weight-only: DequantizeLinear on per-channel int8 weights)."""
    import onnx
    src = source_bundle() / "model.onnx"
    out = WORK / f"int8-{form}.onnx"
    if form == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    else:
        onnx.save(weight_only_int8(onnx.load(str(src))), str(out))
    return out


def weight_only_int8(m):
    """MatMul/Gemm weights -> int8 initializers + per-output-channel DequantizeLinear."""
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in m.graph.initializer}
    new_nodes = []
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)           # [K, N]
            scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0                     # per column
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            base = n.input[1]
            m.graph.initializer.remove(inits[base])
            m.graph.initializer.extend([numpy_helper.from_array(q, base + "_q"),
                                        numpy_helper.from_array(scale.astype(np.float32), base + "_s"),
                                        numpy_helper.from_array(np.zeros_like(q[0]), base + "_z")])
            new_nodes.append(helper.make_node("DequantizeLinear", [base + "_q", base + "_s", base + "_z"], [base],
                                              axis=1, name=base + "_dq"))
        new_nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    return m


@functools.lru_cache(maxsize=None)
def compiled(target: str = "x86-64", source: str = "bundle", **kw) -> Path:
    from edge_slim.aot.lower.pipeline import compile_model
    src = source_bundle() if source == "bundle" else int8_graph(source)
    extra = "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
    out = WORK / f"{target}-{source}{'-' + extra if extra else ''}"
    compile_model(src, target, out=out, **kw)
    return out


def elf_machine(p: Path) -> int:
    from edge_slim.runtime.backends.tvm_backend import elf_machine as em
    return em(p)


def sample_inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        tok = rng.integers(5, 44, (1, 16)).astype(np.int64)
        tok[0, 0] = 2
        tok[0, int(rng.integers(3, 16)):] = 0
        yield {"image": rng.standard_normal((1, 3, 96, 96)).astype(np.float32), "tokens": tok}


def qdq_conv_model(c, o, k, stride, pad, seed):
    """x -> QuantizeLinear -> DequantizeLinear -> Conv(DequantizeLinear(int8 W, per-channel scales), bias): the
    form of a QDQ stem conv, and the exact result of its integer arithmetic (float64) as the oracle."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    s_x, z_x = np.float32(0.05), np.uint8(rng.integers(1, 255))
    w = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    s_w = (rng.random(o) * 0.02 + 0.001).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for v, n in ((np.array(s_x), "sx"), (np.array(z_x), "zx"), (w, "w"),
             (s_w, "sw"), (np.zeros(o, np.int8), "zw"), (bias, "b"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4)]
    h = 13
    oh = (h + 2 * pad - k) // stride + 1
    g = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, oh, oh])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = (rng.standard_normal((1, c, h, h)) * 4).astype(np.float32)
    q = np.clip(np.round(x / s_x) + int(z_x), 0, 255)
    acc = conv_reference(q - int(z_x), w, stride, pad)     # exact: integers well inside float64's 53 bits
    want = acc * (np.float64(s_x) * s_w.astype(np.float64))[None, :, None, None] + bias[None, :, None, None]
    return m, x, want


def conv_reference(x, w, stride: int, pad: int) -> np.ndarray:
    """A dense NCHW conv ([1, C, H, W] by [O, C, K, K], zero padding) in float64: the oracle of compiled convs."""
    o, _, k, _ = w.shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (xp.shape[2] - k) // stride + 1
    ow = (xp.shape[3] - k) // stride + 1
    out = np.zeros((1, o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[0, :, i:i + stride * oh:stride, j:j + stride * ow:stride]   # [c, oh, ow]
            out[0] += np.einsum("chw,oc->ohw", patch, w[:, :, i, j].astype(np.float64))
    return out


ARM_ENV_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "arm-env.sh"


def arm_env() -> dict | None:
    """Build (or reuse) the qemu environment: its variables; None without bash or the script; the test is
    skipped, with the script's last line as the reason, if the script fails."""
    if shutil.which("bash") is None or not ARM_ENV_SCRIPT.exists():
        return None
    r = subprocess.run(["bash", str(ARM_ENV_SCRIPT)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"qemu aarch64 environment unavailable: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return env


def run_in_arm_guest(script: Path, *args: str, timeout: int = 600):
    """Run `script` with the aarch64 Python of scripts/arm-env.sh under qemu (skips when unavailable)."""
    import os
    env = arm_env()
    run_env = {**os.environ, "QEMU_LD_PREFIX": env["QEMU_LD_PREFIX"], "PYTHONPATH": env["PYTHONPATH"],
               "EDGE_SLIM_TVM_RUNTIME": env["EDGE_SLIM_TVM_RUNTIME"], "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*env["PYTHON"].split(), str(script), *args], capture_output=True, text=True,
                          env=run_env, timeout=timeout)


def assemble_variant_set(folder: Path, parts: list[tuple[str, Path, list[str]]]) -> Path:
    """A variant set made of already compiled bundles: (target name, bundle, cpu_flags its manifest gets)."""
    import json

    from edge_slim.aot.lower.variants import write_variant_set
    folder.mkdir()
    for name, src, flags in parts:
        shutil.copytree(src, folder / name)
        m = json.loads((folder / name / B.MANIFEST).read_text())
        m["target"] = {**m["target"], "name": name, "cpu_flags": flags}
        (folder / name / B.MANIFEST).write_text(json.dumps(m))
    first = json.loads((folder / parts[-1][0] / B.MANIFEST).read_text())
    write_variant_set(folder, first["name"], first["precision"], {"name": "test-set", "kind": "cpu"},
                      [{"dir": n, "target": n, "cpu_flags": f} for n, _, f in parts])
    return folder
