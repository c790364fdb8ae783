"""describe beyond the fp32 ONNX bundle: the int8 bundle keeps the caption decoder (quantized, checksummed),
compiled artifacts carry it as describe.so for every target, and the captions agree across ort, numpy and
tvm (x86-64, and aarch64 under qemu), on a random-init model with a describe head (conftest.dev_describe_bundle).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_clean_error, cli
from edge_slim.runtime import bundle as B
from edge_slim.scenes import caption as C

pytest.importorskip("onnxruntime")
# Every test here needs the session's dev_describe_bundle export (15-25 s with torch on a loaded 2-core
# machine) and most a quantize (5-15 s) or a compile (20-40 s per target): slow, though each check is short.
pytestmark = pytest.mark.slow
SCENES = 6  # held-out scenes each check describes


def scene_images(n: int = SCENES):
    from edge_slim.scenes import renderers as R
    from edge_slim.scenes.evaluate import DEFAULT_EVAL_SEED, model_image
    return [model_image("flat", R.place("flat", DEFAULT_EVAL_SEED, i)) for i in range(n)]


def texts(path, backend: str, images) -> list[str]:
    import edge_slim
    s = edge_slim.load(path, backend=backend, threads=1)
    out = [s.describe(img) for img in images]
    assert all(d.backend == backend and C.parse_caption(d.text).objects == d.objects for d in out)
    s.close()
    return [d.text for d in out]


def word_agreement(ref: list[str], got: list[str]) -> float:
    equal = sum(x == y for a, b in zip(ref, got) for x, y in zip(a.split(), b.split()))
    return equal / sum(len(a.split()) for a in ref)


@pytest.fixture(scope="module")
def int8_bundle(dev_describe_bundle, tmp_path_factory):
    """The dev bundle quantized in the default form; the budget is wide open (a random model's answers mean
    nothing), so the decoder is quantized and the report shows the describe figures it was judged by."""
    from edge_slim.aot.quantize.slimpajama import quantize_bundle
    out = tmp_path_factory.mktemp("describe-int8") / "int8"
    report = quantize_bundle(dev_describe_bundle, out, calib_samples=5, eval_samples=8, describe_samples=8,
                             max_drop=1.0, threads=1)
    return out, report


def test_int8_bundle_carries_a_quantized_checksummed_decoder(dev_describe_bundle, int8_bundle):
    out, report = int8_bundle
    b = B.open_bundle(out)  # verifies every checksum, the decoder's included
    d, src = b.manifest["describe"], B.open_bundle(dev_describe_bundle).manifest
    assert d["graph"] == src["describe"]["graph"] and d["graph"] in b.manifest["files"]
    assert d["precision"] == report["describe"]["precision"] == "int8"
    assert {k: v for k, v in d.items() if k != "precision"} == src["describe"]
    import onnx
    g = onnx.load(str(b.file(d["graph"])))
    ops = {n.op_type for n in g.graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in g.graph.initializer) >= 20
    fp32_bytes = src["files"][d["graph"]]["bytes"]
    assert b.manifest["files"][d["graph"]]["bytes"] < 0.35 * fp32_bytes
    ev = report["describe"]["eval"]
    assert ev["samples"] == 8 and set(C.summarize([])) <= set(ev["fp32"]) and ev["int8"]["word_agreement"] >= 0.8
    assert b.manifest["eval"]["describe"] == ev["int8"]


def test_describe_agrees_on_ort_numpy_and_int8(dev_describe_bundle, int8_bundle):
    images = scene_images()
    fp32 = {be: texts(dev_describe_bundle, be, images) for be in ("ort", "numpy")}
    assert fp32["ort"] == fp32["numpy"]
    assert all(len(C.parse_caption(t).objects) >= 4 for t in fp32["ort"])  # long captions: eos never wins
    int8 = {be: texts(int8_bundle[0], be, images) for be in ("ort", "numpy")}
    assert int8["ort"] == int8["numpy"]  # 7-bit weights: exact integer sums in both
    # int8 memory and decoder vs fp32: on this random model's near-ties (measured 0.97 of words on 16 scenes)
    assert word_agreement(fp32["ort"], int8["ort"]) >= 0.85, (fp32["ort"], int8["ort"])


def test_describe_decoder_gets_the_sessions_backend_options(int8_bundle):
    """backend_options (here the numpy backend's integer arithmetic) reach the decoder's backend too."""
    import edge_slim
    s = edge_slim.load(int8_bundle[0], backend="numpy", backend_options={"arithmetic": "ort-avx2"})
    s.describe(np.zeros((96, 96, 3), np.uint8))
    assert s.backend.arithmetic == s._describer.backend.arithmetic == "ort-avx2"


def test_describe_json_cli_on_int8_bundle(int8_bundle):
    img = scene_images(1)[0]
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    d = json.loads(cli("describe", "-", "--model", int8_bundle[0], "--json", input=buf.getvalue(), check=0).stdout)
    assert set(d) == {"text", "objects", "latency_ms", "backend"} and d["backend"] == "ort"
    assert C.parse_caption(d["text"]).objects == d["objects"] and len(d["objects"]) >= 4


def test_decoder_over_the_budget_keeps_nodes_fp32_then_fails(dev_describe_bundle, tmp_path):
    """A budget no int8 decoder can meet (nor the fp32 one behind int8 memory): the most sensitive decoder
    nodes are kept fp32 one, then two at a time, then BudgetError (quantize writes nothing)."""
    from edge_slim.aot.quantize.calibration import scene_feeds
    from edge_slim.aot.quantize.slimpajama import FORMS, BudgetError, _session
    from edge_slim.aot.quantize.describe import quantize_describe
    b = B.open_bundle(dev_describe_bundle)
    feeds = scene_feeds(_session(b.model_path, b.manifest, 1), 2)
    lines: list[str] = []
    with pytest.raises(BudgetError, match="describe"):
        quantize_describe(b, b.model_path, tmp_path, FORMS["dynamic"], feeds, method="minmax", weight_bits=7,
                          arithmetics=["exact"], max_drop=-0.5, samples=2, max_fp32_nodes=2, threads=1,
                          log=lines.append)
    kept = [int(line.split(", ")[1].split()[0]) for line in lines if "nodes kept fp32" in line]
    assert kept == [0, 1, 2], lines


def test_a_form_that_quantizes_nothing_carries_the_decoder_fp32(dev_describe_bundle, tmp_path):
    from edge_slim.aot.quantize.slimpajama import Form, Step
    from edge_slim.aot.quantize.describe import quantize_describe
    b = B.open_bundle(dev_describe_bundle)
    convs_only = Form("static conv only", (Step("static", ("Conv",), "qop", "u8"),))
    path, rec = quantize_describe(b, b.model_path, tmp_path, convs_only, [], method="minmax", weight_bits=7,
                                  arithmetics=["exact"], max_drop=0.01, samples=2, threads=1)
    assert rec["precision"] == "fp32" and "quantizes nothing" in rec["why"] and rec["drop"] == 0
    assert rec["eval"]["fp32_decoder"]["identical_captions"] == 1.0
    import onnx
    assert not {n.op_type for n in onnx.load(str(path)).graph.node} & {"MatMulInteger", "DequantizeLinear"}


# ---- compiled artifacts ----------------------------------------------------------------------

_COMPILED: dict = {}


def compiled(src, target: str, work) -> B.Bundle:
    """`src` compiled for `target` (memoized per session)."""
    key = (str(src), target)
    if key not in _COMPILED:
        from edge_slim.aot.lower.pipeline import compile_model
        out = work / f"{src.name}-{target}"
        compile_model(src, target, out=out)
        _COMPILED[key] = out
    return B.open_bundle(_COMPILED[key])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
    return tmp_path_factory.mktemp("describe-compiled")


def test_compiled_x86_describes_as_ort_and_int8_as_int8(dev_describe_bundle, int8_bundle, work):
    images = scene_images()
    for src in (dev_describe_bundle, int8_bundle[0]):
        b = compiled(src, "x86-64", work)
        d, srcman = b.manifest["describe"], B.open_bundle(src).manifest
        assert d["graph"] == "describe.so" and "describe.so" in b.manifest["files"]
        assert d["precision"] == srcman["describe"].get("precision", "fp32")
        assert d["source_sha256"] == srcman["files"][srcman["describe"]["graph"]]["sha256"]
        assert d["inputs"] == srcman["describe"]["inputs"] and d["compile"]["flags"]["kernels_scheduled"] > 0
        assert texts(b.path, "tvm", images) == texts(src, "ort", images)
    # the int8 decoder library keeps int8 weights (about a quarter of the fp32 one)
    size = lambda s: compiled(s, "x86-64", work).manifest["files"]["describe.so"]["bytes"]
    assert size(int8_bundle[0]) < 0.6 * size(dev_describe_bundle)


def test_describe_json_cli_on_a_compiled_artifact(int8_bundle, work, tmp_path):
    b = compiled(int8_bundle[0], "x86-64", work)
    img = tmp_path / "scene.png"
    scene_images(1)[0].save(img)
    d = json.loads(cli("describe", img, "--model", b.path, "--json", check=0).stdout)
    assert d["backend"] == "tvm" and len(d["objects"]) >= 4
    assert d["text"] == texts(int8_bundle[0], "ort", [img])[0]
    # the compiled bundle lost its decoder library: one line, exit 4, the rest still answers
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(b.path, broken)
    (broken / "describe.so").unlink()
    B.write_manifest(broken, {k: v for k, v in b.manifest.items() if k != "files"})
    p = cli("describe", img, "--model", broken)
    assert_clean_error(p, 4)
    assert "describe.so" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def has_cc(target: str) -> bool:
    from edge_slim import targets as T
    return T.toolchain_status(T.get_target(target))["ready"]


# One target per build route (x86 variant, aarch64 cross, CUDA with an aarch64 and an x86 host; rpi5 is shared
# with the qemu test). arm64, rpi4, jetson-orin-nx and jetson-agx-orin differ from these only in mcpu/arch
# strings; all nine were compiled the same way by hand (docs/compile.md), ~2 min more here.
@pytest.mark.parametrize("target", ["x86-64-avx512", "rpi5", "jetson-orin-nano", "cuda"])
def test_every_build_route_compiles_the_decoder(int8_bundle, work, target):
    """The int8 bundle (int8 model.onnx and decoder) for each build route: a describe.so for its machine,
    with a GPU binary (cubin, not CUDA source) for the CUDA ones."""
    if not has_cc(target):
        pytest.skip(f"no toolchain for {target}")
    from compile_helpers import ELF_AARCH64, ELF_X86, FATBIN_MAGIC, elf_machine
    b = compiled(int8_bundle[0], target, work)
    lib = b.file(b.manifest["describe"]["graph"])
    want = ELF_AARCH64 if b.manifest["target"]["host_triple"].startswith("aarch64") else ELF_X86
    assert elf_machine(lib) == elf_machine(b.model_path) == want
    if b.manifest["target"]["kind"] == "cuda":
        data = lib.read_bytes()
        assert FATBIN_MAGIC in data and b"__global__" not in data, "describe.so holds CUDA source, not a cubin"
        from test_compile import find_cuobjdump
        tool = find_cuobjdump()
        if tool:
            i = data.index(FATBIN_MAGIC)
            header, body = int.from_bytes(data[i + 6:i + 8], "little"), int.from_bytes(data[i + 8:i + 16], "little")
            fat = work / f"describe-{target}.fatbin"
            fat.write_bytes(data[i:i + header + body])
            listed = subprocess.run([tool, "--list-elf", str(fat)], capture_output=True, text=True)
            assert listed.returncode == 0 and b.manifest["target"]["cuda_arch"] in listed.stdout, listed.stdout


GUEST = r"""
import sys, platform
import numpy as np
from edge_slim.runtime.bundle import open_bundle
from edge_slim.runtime.backends import backend_class
from edge_slim.runtime.describe import Describer
d = Describer(open_bundle(sys.argv[1]), backend_class("tvm"), threads=1)
data = np.load(sys.argv[2])
print("tokens=" + ";".join(",".join(map(str, d.tokens(data[k]))) for k in sorted(data.files)))
assert "tvm" not in sys.modules, "the guest imported the TVM compiler"
print(f"machine={platform.machine()}")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
def test_aarch64_decoder_runs_under_qemu_as_on_x86(int8_bundle, work, tmp_path):
    """The rpi5 artifact's describe.so under qemu, light runtime only, decodes the same tokens as x86 ORT."""
    if not has_cc("rpi5"):
        pytest.skip("no aarch64 cross compiler")
    from compile_helpers import arm_env
    env = arm_env()
    if env is None:
        pytest.skip("no qemu environment script")
    import edge_slim
    from edge_slim.runtime.backends import backend_class
    from edge_slim.runtime.describe import Describer
    s = edge_slim.load(int8_bundle[0], backend="ort", threads=1)
    mems = {f"m{i}": s.encode(img).state["describe_memory"]
            for i, img in enumerate(scene_images(2))}
    np.savez(tmp_path / "mem.npz", **mems)
    d = Describer(s.bundle, backend_class("ort"), threads=1)
    want = ";".join(",".join(map(str, d.tokens(mems[k]))) for k in sorted(mems))
    b = compiled(int8_bundle[0], "rpi5", work)
    (tmp_path / "guest.py").write_text(GUEST)
    run_env = {**os.environ, "QEMU_LD_PREFIX": env["QEMU_LD_PREFIX"], "PYTHONPATH": env["PYTHONPATH"],
               "EDGE_SLIM_TVM_RUNTIME": env["EDGE_SLIM_TVM_RUNTIME"], "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([*env["PYTHON"].split(), str(tmp_path / "guest.py"), str(b.path), str(tmp_path / "mem.npz")],
                       capture_output=True, text=True, env=run_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "machine=aarch64" in r.stdout and f"tokens={want}" in r.stdout, (r.stdout, want)


@pytest.mark.slow
def test_fp16_bundle_carries_the_decoder(dev_describe_bundle, tmp_path):
    import edge_slim
    from edge_slim.aot.quantize.fp16 import fp16_bundle
    r = fp16_bundle(dev_describe_bundle, tmp_path / "fp16", max_drop=1.0, eval_samples=4, threads=1)
    assert r["describe"]["precision"] == "fp32"
    b = B.open_bundle(tmp_path / "fp16")
    assert b.manifest["describe"]["precision"] == "fp32" and b.manifest["describe"]["graph"] in b.manifest["files"]
    text = edge_slim.load(tmp_path / "fp16", backend="ort").describe(np.zeros((96, 96, 3), np.uint8)).text
    assert len(C.parse_caption(text).objects) >= 1


@pytest.mark.slow
def test_quantize_cli_prints_the_decoders_figures(dev_describe_bundle, tmp_path):
    p = cli("quantize", dev_describe_bundle, "-o", tmp_path / "q", "--calib-samples", "3", "--eval-samples", "4",
            "--max-accuracy-drop", "1", "--threads", "1", check=0)
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("describe: decoder")]
    assert "object_recall" in line or "fp32" in line, line
