"""`edge-slim compile`: real TVM compilation of SlimPajama (and tiny bring-your-own graphs).

Each model+target is compiled once per test session (`compiled()` in compile_helpers.py is memoized and
shared with the tvm backend and qemu tests).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
onnx = pytest.importorskip("onnx")

from edge_slim import targets as T  # noqa: E402
from compile_helpers import (ELF_AARCH64, ELF_X86, FATBIN_MAGIC, WORK, compiled, elf_machine,  # noqa: E402
                             has_cc, int8_graph, sample_inputs, source_bundle)
from edge_slim.errors import BadInputError, MissingDependencyError, ModelError  # noqa: E402
from edge_slim.runtime import bundle as B  # noqa: E402

# ---------------------------------------------------------------- x86
def test_x86_bundle_manifest_and_checksums():
    out = compiled("x86-64")
    b = B.open_bundle(out)  # verifies every checksum
    m = b.manifest
    assert m["format"] == "tvm" and m["model_file"] == "model.so"
    assert m["target"]["name"] == "x86-64" and m["target"]["host_triple"] == "x86_64-linux-gnu"
    assert m["target"]["tvm"]["mcpu"] == "x86-64-v3"
    assert m["toolchain"]["tvm"].startswith("0.27") and m["toolchain"]["cc"]
    from edge_slim.aot.lower.pipeline import PHASES
    assert [p["phase"] for p in m["compile"]["phases"]] == [name for name, _ in PHASES]
    assert m["compile"]["flags"]["kernels_scheduled"] == m["compile"]["flags"]["kernels"]  # the rules cover all
    src = source_bundle()
    assert m["source_model_sha256"] == B.sha256_file(src / "model.onnx")
    s = json.loads((src / B.MANIFEST).read_text())
    for k in ("config", "inputs", "outputs", "tokenizer", "answers", "preprocess"):
        assert m[k] == s[k]
    assert elf_machine(b.model_path) == ELF_X86


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_gelu_compiles_to_vector_erf_not_libm_calls():
    """A Gelu node legalized as one op calls scalar libm erff per element (the model ran 1.8x slower);
    the lowering rewrites it to erf, which FastMath replaces by the vectorizable fast_erf."""
    import onnx
    if "Gelu" not in {n.op_type for n in onnx.load(str(source_bundle() / "model.onnx")).graph.node}:
        pytest.skip("source graph has no Gelu node")
    syms = subprocess.run(["nm", "-D", "--undefined-only", str(compiled("x86-64") / "model.so")],
                          capture_output=True, text=True, check=True).stdout.split()
    assert not {"erf", "erff"} & set(syms)


def test_debug_dump_writes_ir_per_phase(tmp_path):
    from edge_slim.aot.lower.pipeline import compile_model
    src = tiny_onnx(tmp_path)
    compile_model(src, "x86-64", out=tmp_path / "out", debug_dump=tmp_path / "dump", input_shapes={"x": [1, 3, 16, 16]})
    names = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert names[:4] == ["02-import.txt", "03-graph.txt", "04-schedule.txt", "05-prepack.txt"]
    assert "T.prim_func" in (tmp_path / "dump" / "04-schedule.txt").read_text()


# ---------------------------------------------------------------- bring your own model
def tiny_onnx(tmp_path: Path, batch: str | int = "N") -> Path:
    """Conv -> Relu -> a Reshape whose target is computed at run time (Shape/Gather/Concat),
    as exporters often write it; dynamic batch."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Shape", ["r"], ["s"]),
         helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
         helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
         helper.make_node("Reshape", ["r", "shape"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, None])],
        [w, b, numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array([-1], np.int64), "minus1")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    p = tmp_path / "tiny.onnx"
    onnx.save(m, str(p))
    return p


def test_byo_onnx_with_input_shape_and_run(tmp_path):
    """compile a bare .onnx with --input-shape, then `edge-slim run` it on .npy files."""
    from click.testing import CliRunner
    from edge_slim.cli.main import cli
    src = tiny_onnx(tmp_path)
    out = tmp_path / "tiny-x86"
    r = CliRunner().invoke(cli, ["compile", str(src), "--target", "x86-64", "-o", str(out),
                                 "--input-shape", "x=2,3,16,16", "--json"])
    assert r.exit_code == 0, r.output
    m = B.open_bundle(out).manifest
    assert m["inputs"] == [{"name": "x", "shape": [2, 3, 16, 16], "dtype": "float32"}]
    assert m["tokenizer"] is None and m["answers"] is None
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, ["run", str(out), "--input", f"x={tmp_path / 'x.npy'}",
                                 "--output-dir", str(tmp_path / "res"), "--json"])
    assert r.exit_code == 0, r.output
    got = np.load(tmp_path / "res" / "y.npy")
    import onnxruntime as ort
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == ref.shape == (2, 8 * 16 * 16)
    assert np.abs(got - ref).max() < 1e-4


def test_dynamic_dims_need_input_shape(tmp_path):
    from edge_slim.aot.lower.pipeline import compile_model
    with pytest.raises(BadInputError, match=r"--input-shape x=1,3,16,16"):
        compile_model(tiny_onnx(tmp_path), "x86-64", out=tmp_path / "o")


def test_unsupported_operators_are_listed_all_at_once(tmp_path):
    from onnx import TensorProto, helper
    from edge_slim.aot.lower.pipeline import compile_model
    v = helper.make_tensor_value_info
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("GRU", ["a", "a", "a"], ["b"]),
         helper.make_node("LSTM", ["b", "b", "b"], ["c"]), helper.make_node("LSTM", ["c", "c", "c"], ["d"]),
         helper.make_node("FusedMatMul", ["d", "d"], ["y"], domain="com.microsoft")],
        "bad", [v("x", TensorProto.FLOAT, [1, 4])], [v("y", TensorProto.FLOAT, [1, 4])])
    p = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]),
              str(p))
    with pytest.raises(ModelError) as e:
        compile_model(p, "x86-64", out=tmp_path / "o")
    msg = str(e.value)
    assert "GRU (1 node)" in msg and "LSTM (2 nodes)" in msg and "com.microsoft.FusedMatMul" in msg
    assert "Relu" not in msg


def test_internal_pass_failure_is_one_line_and_a_log(monkeypatch, tmp_path, capsys):
    """A bug in a pass (ours or TVM's) is not the user's input: one line naming the phase and the log that
    holds the traceback, exit 6, nothing written where the bundle would go."""
    import sys
    from edge_slim.aot.lower import pipeline as lower
    from edge_slim.cli.common import run_cli
    from edge_slim.cli.main import cli

    def broken(job):
        raise RuntimeError("pass exploded\nsecond line of TVM's message")
    monkeypatch.setattr(lower, "PHASES", [(n, broken if n == "graph" else f) for n, f in lower.PHASES])
    out = tmp_path / "o"
    monkeypatch.setattr(sys, "argv", ["edge-slim", "compile", str(tiny_onnx(tmp_path)), "-t", "x86-64", "-o", str(out),
                                      "--input-shape", "x=1,3,16,16"])
    assert run_cli(cli) == 6
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("edge-slim: error:")]
    assert len(line) == 1 and "graph phase failed: RuntimeError: pass exploded (full traceback in" in line[0]
    assert "Traceback" not in err and "second line" not in err
    log = tmp_path / "o.compile-error.log"
    assert str(log) in line[0] and "Traceback" in log.read_text() and "second line" in log.read_text()
    assert not out.exists()


@pytest.mark.parametrize("failing", ["x86-64", "x86-64-avx512"])
def test_a_variant_that_fails_to_compile_leaves_its_log_beside_the_output(monkeypatch, tmp_path, capsys, failing):
    """A variant set builds every variant in a staging folder that goes away on failure: the failing variant's
    traceback log is kept beside the output and the error names that copy, whether the baseline (built first)
    or a later variant fails."""
    import sys
    from edge_slim.aot.lower import pipeline as lower
    from edge_slim.cli.common import run_cli
    from edge_slim.cli.main import cli

    graph = dict(lower.PHASES)["graph"]

    def graph_phase(job):
        if job.target.name == failing:
            raise RuntimeError(f"pass exploded on {failing}")
        return graph(job)
    monkeypatch.setattr(lower, "PHASES", [(n, graph_phase if n == "graph" else f) for n, f in lower.PHASES])
    out = tmp_path / "o"
    monkeypatch.setattr(sys, "argv", ["edge-slim", "compile", str(tiny_onnx(tmp_path)), "-t", "x86-64-multi", "-o",
                                      str(out), "--input-shape", "x=1,3,16,16"])
    assert run_cli(cli) == 6
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("edge-slim: error:")]
    log = tmp_path / "o.compile-error.log"
    assert len(line) == 1 and f"pass exploded on {failing}" in line[0] and str(log) in line[0], err
    assert "Traceback" in log.read_text() and not out.exists()
    assert not list(tmp_path.glob(".o.*"))           # no staging folder (B.staging_dir) left behind


def test_missing_cross_compiler_names_the_package(monkeypatch, tmp_path):
    from edge_slim.aot.lower.pipeline import compile_model
    monkeypatch.setenv("PATH", str(tmp_path))  # no compilers at all
    monkeypatch.setattr(T, "NVCC_CANDIDATES", ("nvcc",))
    monkeypatch.delenv("NVCC", raising=False)
    with pytest.raises(MissingDependencyError, match="gcc-aarch64-linux-gnu"):
        compile_model(None, "rpi5", out=tmp_path / "o")
    with pytest.raises(MissingDependencyError, match="nvcc"):
        compile_model(None, "jetson", out=tmp_path / "o")


def test_fp32_graph_with_int8_precision_is_refused(tmp_path):
    from edge_slim.aot.lower.pipeline import compile_model
    with pytest.raises(BadInputError, match="edge-slim quantize"):
        compile_model(source_bundle(), "x86-64", precision="int8", out=tmp_path / "o")


# ---------------------------------------------------------------- int8
@pytest.mark.slow
@pytest.mark.parametrize("form", ["dynamic", "weights"])
def test_int8_keeps_weights_int8_and_matches_ort(form):
    import onnxruntime as ort
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    out = compiled("x86-64", form)
    b = B.open_bundle(out)
    assert b.manifest["precision"] == "int8"
    fp32_size = B.open_bundle(compiled("x86-64")).model_path.stat().st_size
    assert b.model_path.stat().st_size < 0.6 * fp32_size  # int8 weights, not folded back to fp32
    be = TvmBackend(b, threads=1)
    # The oracle is the graph's own semantics: ONNX Runtime with its graph optimizer off. (With it on,
    # ORT rewrites DequantizeLinear+MatMul into its own int8 kernels: 0.07 off on trained logits.)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(int8_graph(form)), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    agree = 0
    for feeds in sample_inputs(8, seed=3):
        ref = dict(zip(names, sess.run(None, feeds)))
        got = be.run(feeds)
        err = float(np.abs(got["answer_logits"] - ref["answer_logits"]).max())
        scale = max(1.0, float(np.abs(ref["answer_logits"]).max()))
        # weight-only: the same fp32 arithmetic. dynamic: activations are rounded to uint8 at run time,
        # and a last-bit difference upstream can move a value across a rounding step.
        assert err < (1e-3 if form == "weights" else 0.02 * scale), err
        agree += int(got["answer_logits"].argmax() == ref["answer_logits"].argmax())
    assert agree >= 7


# ---------------------------------------------------------------- ARM and Jetson (cross)
@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu "
                    "libc6-dev-arm64-cross)")
@pytest.mark.parametrize("target", ["rpi5"])
def test_arm_artifact_is_aarch64_elf(target):
    out = compiled(target)
    b = B.open_bundle(out)
    assert elf_machine(b.model_path) == ELF_AARCH64
    assert b.manifest["target"]["tvm"]["mcpu"] == "cortex-a76"
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:  # the rules vectorize: NEON fused multiply-adds on 4 fp32 lanes
        asm = subprocess.run([objdump, "-d", str(b.model_path)], capture_output=True, text=True).stdout
        assert asm.count("fmla\tv") > 200


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("jetson"), reason="needs the aarch64 cross compiler and nvcc")
def test_jetson_artifact_carries_sm87_cubin():
    out = compiled("jetson")
    b = B.open_bundle(out)
    assert b.manifest["target"]["cuda_arch"] == "sm_87"
    assert b.manifest["target"]["tvm"]["host"]["mcpu"] == "cortex-a78"
    data = b.model_path.read_bytes()
    assert elf_machine(b.model_path) == ELF_AARCH64
    assert FATBIN_MAGIC in data, "no fatbin: the library holds CUDA source instead of a cubin"
    assert b"__global__" not in data and b"extern \"C\" __global__" not in data
    i = data.index(FATBIN_MAGIC)
    header, body = int.from_bytes(data[i + 6:i + 8], "little"), int.from_bytes(data[i + 8:i + 16], "little")
    cuobjdump = find_cuobjdump()
    if cuobjdump:
        fat = Path(tempfile.mkdtemp(dir=WORK)) / "kernels.fatbin"
        fat.write_bytes(data[i:i + header + body])
        listed = subprocess.run([cuobjdump, "--list-elf", str(fat)], capture_output=True, text=True)
        assert listed.returncode == 0 and "sm_87" in listed.stdout, listed.stdout + listed.stderr


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, the CUDA toolkit, or PyPI's nvidia-cuda-cuobjdump."""
    import importlib.util
    found = shutil.which("cuobjdump") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/cuobjdump")), None)
    if found:
        return found
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for p in Path(root).glob("*/bin/cuobjdump"):
            return str(p)
    return None


def test_cli_compile_help_lists_options():
    from click.testing import CliRunner
    from edge_slim.cli.main import cli
    r = CliRunner().invoke(cli, ["compile", "--help"])
    assert r.exit_code == 0
    for opt in ("--target", "--precision", "--tune-trials", "--input-shape", "--debug-dump", "--json"):
        assert opt in r.output


@pytest.mark.slow
@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None for m in ("psutil", "cloudpickle", "xgboost")),
                    reason="MetaSchedule tuning needs psutil, cloudpickle, xgboost (pip install 'edge-slim[tvm]')")
def test_tuning_database_is_kept_and_reused(tmp_path):
    """A few MetaSchedule trials on a tiny model: the database is written, and a second compile
    applies it without tuning (same model + target)."""
    from edge_slim.aot.lower.pipeline import compile_model
    src = tiny_onnx(tmp_path)
    shapes = {"x": [1, 3, 16, 16]}
    m1 = compile_model(src, "x86-64", out=tmp_path / "a", tune_trials=8, input_shapes=shapes, tuning_dir=tmp_path / "db")
    db = Path(m1["compile"]["flags"]["tuning_database"])
    assert (db / "database_tuning_record.json").stat().st_size > 0
    m2 = compile_model(src, "x86-64", out=tmp_path / "b", input_shapes=shapes, tuning_dir=tmp_path / "db")
    assert m2["compile"]["flags"]["tuning_database"] == str(db)
    assert "tune_trials" not in m2["compile"]["flags"]


def test_conv_weights_fp32_folds_the_dequantize_exactly():
    """conv2d(x, dequantize(int8 W)) becomes a conv on the float32 weight (w - zp) * s, per output channel."""
    import tvm
    from tvm import relax
    from edge_slim.aot.lower.graph_passes import conv_weights_fp32_pass
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (8, 3, 3, 3)).astype(np.int8)
    s, z = rng.uniform(0.001, 0.1, 8).astype(np.float32), rng.integers(-5, 5, 8).astype(np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            dq = bb.emit(relax.op.dequantize(relax.const(w), relax.const(s), relax.const(z), axis=0))
            y = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, dq, strides=2, padding=1)))
        bb.emit_func_output(y)
    mod = relax.transform.DeadCodeElimination()(conv_weights_fp32_pass()(bb.get()))
    consts = [c.value.numpy() for c in relax.analysis.get_var2val(mod["main"]).values()
              if isinstance(c, relax.Call) for c in c.args if isinstance(c, tvm.ir.Constant)]
    want = (w.astype(np.int32) - z.reshape(8, 1, 1, 1)).astype(np.float32) * s.reshape(8, 1, 1, 1)
    assert len(consts) == 1 and consts[0].dtype == np.float32 and np.array_equal(consts[0], want)
    assert "dequantize" not in mod["main"].script()
