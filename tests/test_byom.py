"""Bring your own model: real third-party ONNX models from PyPI wheels, compiled with TVM and matched
against ONNX Runtime (rtol/atol 1e-3), plus the rewrites (dynamic dims, --bind, If inlining, OneHot) on
tiny graphs built here.

The models come from scripts/fetch-models.sh (run by scripts/dev-setup.sh; cached outside git); nothing is
downloaded here: without the cache the real-model tests skip, naming the script. Each model+target is
compiled once per session (`compiled()` is memoized). aarch64: a subset (AARCH64), run under qemu in one
emulated process, as tests/test_arm_qemu.py does.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge_slim import targets as T  # noqa: E402
from edge_slim.errors import BadInputError, ModelError  # noqa: E402
from edge_slim.runtime import bundle as B  # noqa: E402
from compile_helpers import arm_env  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGE_SLIM_MODEL_CACHE", REPO / ".cache" / "third-party-models"))
WORK = Path(tempfile.mkdtemp(prefix="edge-slim-test-byom-"))
atexit.register(shutil.rmtree, WORK, True)
RTOL = ATOL = 1e-3


@dataclass(frozen=True)
class Model:
    package: str                 # <name>-<version> folder of the cache
    file: str
    shapes: dict
    feed: str = "uniform"        # uniform [0, 1) images, bytes (integers 0..256 as float32), or audio (N(0, 0.1))
    binds: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return CACHE / self.package / self.file


MODELS = {
    "ocr-det": Model("rapidocr-onnxruntime-1.4.4", "ch_PP-OCRv4_det_infer.onnx", {"x": [1, 3, 320, 320]}),
    "ocr-cls": Model("rapidocr-onnxruntime-1.4.4", "ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": [1, 3, 48, 192]}),
    "ocr-rec": Model("rapidocr-onnxruntime-1.4.4", "ch_PP-OCRv4_rec_infer.onnx", {"x": [1, 3, 48, 320]}),
    "yolov8n": Model("nudenet-3.4.2", "320n.onnx", {"images": [1, 3, 320, 320]}),
    "magika": Model("magika-0.5.1", "model.onnx", {"bytes": [1, 1536]}, feed="bytes"),
    # one 512-sample chunk at 16 kHz and the LSTM state; the If on the sample rate folds away with the bind
    "silero-vad": Model("silero-vad-6.2.3", "silero_vad.onnx", {"input": [1, 512], "state": [2, 1, 128]},
                        feed="audio", binds={"sr": 16000}),
}
AARCH64 = ("ocr-cls", "magika", "yolov8n", "silero-vad")   # the qemu subset: classifier, bytes, detector, audio
SILERO = CACHE / "silero-vad-6.2.3"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: run `bash scripts/fetch-models.sh` (dev-setup.sh does) to fetch the "
                    "third-party models once")
    return path


@functools.lru_cache(maxsize=None)
def compiled(name: str, target: str = "x86-64") -> Path:
    from edge_slim.aot.lower.pipeline import compile_model
    m = MODELS[name]
    out = WORK / f"{name}-{target}"
    compile_model(need(m.path), target, out=out, input_shapes=m.shapes, binds=m.binds)
    return out


def feeds_for(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    m, rng = MODELS[name], np.random.default_rng(seed)
    if m.feed == "bytes":
        return {k: rng.integers(0, 257, s).astype(np.float32) for k, s in m.shapes.items()}
    if m.feed == "audio":
        return {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in m.shapes.items()}
    return {k: rng.uniform(0, 1, s).astype(np.float32) for k, s in m.shapes.items()}


def ort_outputs(path: Path, feeds: dict, binds: dict | None = None) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs; `binds` (the inputs a compile bound to constants) are fed to it as arrays."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in s.get_inputs()}
    bound = {k: np.array(v, np.int64 if "int64" in types[k] else np.float32) for k, v in (binds or {}).items()}
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {**feeds, **bound})))


def assert_matches(got: dict, ref: dict, where: str) -> None:
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    for k, r in ref.items():
        assert got[k].shape == r.shape, (k, got[k].shape, r.shape)
        err = float(np.abs(got[k].astype(np.float64) - r).max())
        assert np.allclose(got[k], r, rtol=RTOL, atol=ATOL), f"{where} {k}: max abs diff {err}"


# ---------------------------------------------------------------- real models, x86-64
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_model_x86_matches_ort(name):
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    out = compiled(name)
    b = B.open_bundle(out)
    assert b.manifest["inputs"] == [{"name": k, "shape": v, "dtype": "float32"} for k, v in MODELS[name].shapes.items()]
    be = TvmBackend(b, threads=1)
    for seed in (0, 1):
        f = feeds_for(name, seed)
        assert_matches(be.run(f), ort_outputs(MODELS[name].path, f, MODELS[name].binds), f"{name} x86-64 seed {seed}")


def test_silero_vad_if_needs_bind_then_streams_as_ort_does(tmp_path):
    """silero-vad branches on its sample-rate input (one If holding the 16 kHz and 8 kHz networks):
    unbound, the error names If and --bind (not the LSTM inside, which the rewrite handles); bound, the If
    (and the shape Ifs inside) fold away, the LSTM is unrolled, and the artifact, fed its own state back
    chunk after chunk as an app streams audio, gives ONNX Runtime's probabilities."""
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    src = need(SILERO / "silero_vad.onnx")
    shapes = {"input": [1, 512], "state": [2, 1, 128]}
    with pytest.raises(ModelError) as e:
        compile_model(src, "x86-64", out=tmp_path / "a", input_shapes=shapes)
    assert "If (1 node) at If_0" in str(e.value) and "--bind" in str(e.value) and "LSTM" not in str(e.value)
    p = subprocess.run([sys.executable, "-m", "edge_slim", "compile", str(src), "-o", str(tmp_path / "c"),
                        "--input-shape", "input=1,512", "--input-shape", "state=2,1,128", "--bind", "sr=16000",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    b = B.open_bundle(tmp_path / "c")
    assert b.manifest["compile"]["flags"]["onnx_rewrites"] == {"lstm_unrolled": 1}
    assert b.manifest["compile"]["flags"]["padded_to_whole_vectors"] == {"convs": 1}     # the STFT's 258 filters
    stream(TvmBackend(b, threads=1), src, {"sr": np.array(16000, np.int64)})


def stream(be, src: Path, extra: dict, chunks: int = 12) -> None:
    """Feed `chunks` chunks of noise and tone, the state carried from ONNX Runtime's previous output."""
    s = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    rng, state = np.random.default_rng(3), np.zeros((2, 1, 128), np.float32)
    tone = np.sin(np.arange(512) * 2 * np.pi * 220 / 16000).astype(np.float32)
    for i in range(chunks):
        x = (rng.standard_normal((1, 512)) * 0.02 + (0.5 * tone if i % 3 else 0)).astype(np.float32)
        ref = dict(zip(names, s.run(None, {"input": x, "state": state, **extra})))
        need_extra = {k: v for k, v in extra.items() if any(i["name"] == k for i in be.inputs)}
        assert_matches(be.run({"input": x, "state": state, **need_extra}), ref, f"chunk {i}")
        state = ref[names[1]]


def test_silero_vad_16k_export_folds_its_shape_ifs_and_compiles(tmp_path):
    """The 16 kHz export's three Ifs branch on shapes: with the shapes fixed they fold away unbound; its
    LSTM is unrolled; the unused `sr` input stays an input of the artifact (a 0-d int64)."""
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    src = need(SILERO / "silero_vad_16k_op15.onnx")
    compile_model(src, "x86-64", out=tmp_path / "a", input_shapes={"input": [1, 512], "state": [2, 1, 128]})
    be = TvmBackend(B.open_bundle(tmp_path / "a"), threads=1)
    assert {i["name"]: i["shape"] for i in be.inputs}["sr"] == []
    stream(be, src, {"sr": np.array(16000, np.int64)}, chunks=4)


# ---------------------------------------------------------------- the rewrites, on tiny graphs
def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=17) -> Path:
    from onnx import helper
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), str(p))
    return p


def if_graph(tmp_path) -> Path:
    """y = x * 2 if rate == 16000 else x + 1; x is [N, -1] (a -1 and a named dim, as Paddle and torch write)."""
    from onnx import TensorProto, helper, numpy_helper
    v = helper.make_tensor_value_info
    two = helper.make_graph([helper.make_node("Mul", ["x", "c2"], ["t"])], "then", [], [v("t", TensorProto.FLOAT, None)],
                            [numpy_helper.from_array(np.array(2, np.float32), "c2")])
    one = helper.make_graph([helper.make_node("Add", ["x", "c1"], ["e"])], "else", [], [v("e", TensorProto.FLOAT, None)],
                            [numpy_helper.from_array(np.array(1, np.float32), "c1")])
    x = v("x", TensorProto.FLOAT, ["N", -1])
    x.type.tensor_type.shape.dim[1].dim_value = -1
    return _save(tmp_path, [helper.make_node("Equal", ["rate", "k"], ["cond"]),
                            helper.make_node("If", ["cond"], ["y"], then_branch=two, else_branch=one)],
                 [x, v("rate", TensorProto.INT64, [])], [v("y", TensorProto.FLOAT, ["N", -1])],
                 [numpy_helper.from_array(np.array(16000, np.int64), "k")])


@pytest.mark.parametrize("rate", [16000, 8000])
def test_bind_folds_if_and_input_shape_binds_minus_one(tmp_path, rate):
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    src = if_graph(tmp_path)
    with pytest.raises(BadInputError, match=r"--input-shape x=1,1"):
        compile_model(src, "x86-64", out=tmp_path / "o", binds={"rate": [rate]})
    m = compile_model(src, "x86-64", out=tmp_path / "o", input_shapes={"x": [2, 5]}, binds={"rate": [rate]})
    assert m["compile"]["flags"]["onnx_if_inlined"] == 1 and m["compile"]["flags"]["bound_inputs"] == {"rate": rate}
    assert [i["name"] for i in m["inputs"]] == ["x"]
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    got = TvmBackend(B.open_bundle(tmp_path / "o"), threads=1).run({"x": x})["y"]
    ref = ort_outputs(src, {"x": x, "rate": np.array(rate, np.int64)})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert np.allclose(got, x * 2 if rate == 16000 else x + 1)


def test_shared_dimension_names_resolve_once_and_conflicts_are_named(tmp_path):
    from onnx import TensorProto, helper
    from edge_slim.aot.lower.onnx_rewrites import resolve_inputs
    v = helper.make_tensor_value_info
    p = _save(tmp_path, [helper.make_node("Add", ["a", "b"], ["y"])],
              [v("a", TensorProto.FLOAT, ["batch", 4]), v("b", TensorProto.FLOAT, ["batch", 4])],
              [v("y", TensorProto.FLOAT, ["batch", 4])])
    m = onnx.load(str(p))
    specs = resolve_inputs(m, {"a": [3, 4]}, {}, {})
    assert [s["shape"] for s in specs] == [[3, 4], [3, 4]]
    with pytest.raises(BadInputError, match="'batch' two sizes"):
        resolve_inputs(m, {"a": [3, 4], "b": [2, 4]}, {}, {})
    with pytest.raises(BadInputError, match="does not fit"):
        resolve_inputs(m, {"a": [3, 5]}, {}, {})
    with pytest.raises(BadInputError, match="no symbolic dimension"):
        resolve_inputs(m, {}, {"seq": 8}, {})
    with pytest.raises(BadInputError, match="--bind names c"):
        resolve_inputs(m, {}, {}, {"c": [1]})


@pytest.mark.parametrize("spec, msg", [("x", "NAME=VALUE"), ("x=a,b", "not a number"), ("x=/no/such.npy", "not a readable")])
def test_bad_bind_is_one_clear_error(spec, msg):
    from edge_slim.aot.lower.onnx_rewrites import parse_bind
    with pytest.raises(BadInputError, match=msg):
        parse_bind(spec)


def test_onehot_rewrite_matches_ort(tmp_path):
    """The importer rejects OneHot with a 1-element depth (magika's form) and makes it float64; the
    compare form compiles and agrees, negative indices included."""
    from onnx import TensorProto, helper, numpy_helper
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    v = helper.make_tensor_value_info
    src = _save(tmp_path, [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                           helper.make_node("OneHot", ["i", "depth", "vals"], ["y"], axis=-1)],
                [v("x", TensorProto.FLOAT, [2, 6])], [v("y", TensorProto.FLOAT, [2, 6, 5])],
                [numpy_helper.from_array(np.array([5], np.int64), "depth"),
                 numpy_helper.from_array(np.array([0.0, 3.0], np.float32), "vals")])
    m = compile_model(src, "x86-64", out=tmp_path / "o")
    assert m["compile"]["flags"]["onnx_rewrites"] == {"onehot_as_compare": 1}
    x = np.array([[0, 1, 4, -1, -5, 2.7], [3, 3, 0, 1, 2, -2.2]], np.float32)
    got = TvmBackend(B.open_bundle(tmp_path / "o"), threads=1).run({"x": x})["y"]
    np.testing.assert_array_equal(got, ort_outputs(src, {"x": x})["y"])


def lstm_graph(tmp_path, steps: int, with_state: bool, with_bias: bool, outputs=("Y", "Y_h", "Y_c"), opset=17, **attrs):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(steps * 4 + with_state * 2 + with_bias)
    v = helper.make_tensor_value_info
    inp, hid, batch = 5, 6, 2
    nd = 2 if attrs.get("direction") == "bidirectional" else 1
    inits = [numpy_helper.from_array((rng.standard_normal((nd, 4 * hid, inp)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((nd, 4 * hid, hid)) * 0.5).astype(np.float32), "R")]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((nd, 8 * hid)).astype(np.float32), "B"))
    ins = ["x", "W", "R", "B" if with_bias else "", "", "h0" if with_state else "", "c0" if with_state else ""]
    graph_in = [v("x", TensorProto.FLOAT, [steps, batch, inp])]
    if with_state:
        graph_in += [v("h0", TensorProto.FLOAT, [nd, batch, hid]), v("c0", TensorProto.FLOAT, [nd, batch, hid])]
    outs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")]
    shapes = {"Y": [steps, nd, batch, hid], "Y_h": [nd, batch, hid], "Y_c": [nd, batch, hid]}
    node = helper.make_node("LSTM", ins, outs, hidden_size=hid, **attrs)
    # a consumer of Y, so that the outputs are not all graph outputs of the LSTM itself
    extra = [helper.make_node("Relu", ["Y"], ["Yr"])] if "Y" in outputs else []
    return _save(tmp_path, [node, *extra], graph_in,
                 [v(o, TensorProto.FLOAT, shapes[o]) for o in outputs] + ([v("Yr", TensorProto.FLOAT, shapes["Y"])] if extra else []),
                 inits, opset=opset), graph_in


def random_feeds(graph_in, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in graph_in}


@pytest.mark.parametrize("steps,with_state,with_bias,opset,direction", [
    (1, True, True, 17, "forward"), (3, False, True, 17, "forward"), (4, True, False, 11, "forward"),
    (2, False, False, 13, "forward"), (3, True, True, 17, "reverse"), (3, True, True, 17, "bidirectional"),
    (2, False, True, 11, "bidirectional")])
def test_lstm_unrolled_computes_what_ort_computes(tmp_path, steps, with_state, with_bias, opset, direction):
    """The rewrite on ONNX graphs, run by ONNX Runtime before and after: Y, Y_h and Y_c agree, with and
    without initial state and bias, one step and several, each direction, opsets with Squeeze/Unsqueeze
    axes as attribute or input."""
    from edge_slim.aot.lower.onnx_rewrites import apply_rewrites
    src, graph_in = lstm_graph(tmp_path, steps, with_state, with_bias, opset=opset, direction=direction)
    m = onnx.load(str(src))
    assert apply_rewrites(m) == {"lstm_unrolled": 1}
    assert not any(n.op_type == "LSTM" for n in m.graph.node)
    onnx.checker.check_model(m)
    feeds = random_feeds(graph_in, 9)
    ref = ort_outputs(src, feeds)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_lstm_forms_not_covered_stay_and_are_named(tmp_path):
    """An LSTM with a cell clip is not unrolled: the compile error still names it; a bidirectional one
    compiles and matches ONNX Runtime."""
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    src, _ = lstm_graph(tmp_path, 2, False, True, outputs=("Y_h",), clip=3.0)
    with pytest.raises(ModelError, match=r"LSTM \(1 node\)"):
        compile_model(src, "x86-64", out=tmp_path / "clip")
    src, graph_in = lstm_graph(tmp_path, 3, True, True, direction="bidirectional")
    compile_model(src, "x86-64", out=tmp_path / "bi", split=False)
    feeds = random_feeds(graph_in, 1)
    assert_matches(TvmBackend(B.open_bundle(tmp_path / "bi"), threads=1).run(feeds), ort_outputs(src, feeds), "lstm")


def test_dynamic_batch_one_artifact_bound_checked(tmp_path):
    """--dynamic batch=8 keeps the batch symbolic (a Relax shape variable): one artifact serves 1..8,
    matching ORT at each size; 9 is refused with the bound named. Through the CLI, with --bind too."""
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper
    from edge_slim.cli.main import cli
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    rng = np.random.default_rng(0)
    v = helper.make_tensor_value_info
    src = _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                           helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["m"]),
                           helper.make_node("Mul", ["m", "gain"], ["y"])],
                [v("x", TensorProto.FLOAT, ["batch", 3, 16, 16]), v("gain", TensorProto.FLOAT, [1])],
                [v("y", TensorProto.FLOAT, ["batch", 5])],
                [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "fc")])
    r = CliRunner().invoke(cli, ["compile", str(src), "-o", str(tmp_path / "o"), "--dynamic", "batch=8",
                                 "--bind", "gain=0.5", "--json"])
    assert r.exit_code == 0, r.output
    b = B.open_bundle(tmp_path / "o")
    assert b.manifest["inputs"] == [{"name": "x", "shape": ["batch", 3, 16, 16], "dtype": "float32", "dynamic": {"batch": 8}}]
    be = TvmBackend(b, threads=1)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
        ref = ort_outputs(src, {"x": x, "gain": np.array([0.5], np.float32)})["y"]
        np.testing.assert_allclose(be.run({"x": x})["y"], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(BadInputError, match="batch from 1 to 8"):
        be.run({"x": np.zeros((9, 3, 16, 16), np.float32)})
    with pytest.raises(BadInputError, match=r"takes \['batch', 3, 16, 16\]"):
        be.run({"x": np.zeros((2, 3, 16, 8), np.float32)})
    r = CliRunner().invoke(cli, ["compile", str(src), "-o", str(tmp_path / "p"), "--dynamic", "seq=4"])
    assert isinstance(r.exception, BadInputError) and "no symbolic dimension" in str(r.exception)


# ---------------------------------------------------------------- real models, aarch64 under qemu
GUEST = r"""
import sys, platform
import numpy as np
from edge_slim.runtime.bundle import open_bundle
from edge_slim.runtime.backends import backend_class
args = sys.argv[1:]
for bundle, src, dst in zip(args[0::3], args[1::3], args[2::3]):
    be = backend_class("tvm")(open_bundle(bundle), threads=1)
    data = np.load(src)
    np.savez(dst, **be.run({k: data[k] for k in data.files}))
assert "tvm" not in sys.modules, "the guest imported the TVM compiler"
print(f"machine={platform.machine()}")
"""


@pytest.mark.slow
@pytest.mark.skipif(not T.toolchain_status(T.get_target("arm64"))["ready"],
                    reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
def test_real_models_aarch64_under_qemu_match_ort(tmp_path):
    for name in AARCH64:
        need(MODELS[name].path)
    env = arm_env()
    args, refs = [], {}
    for name in AARCH64:
        f = feeds_for(name, seed=5)
        np.savez(tmp_path / f"{name}-in.npz", **f)
        refs[name] = ort_outputs(MODELS[name].path, f, MODELS[name].binds)
        args += [str(compiled(name, "arm64")), str(tmp_path / f"{name}-in.npz"), str(tmp_path / f"{name}-out.npz")]
    (tmp_path / "guest.py").write_text(GUEST)
    run_env = {**os.environ, "QEMU_LD_PREFIX": env["QEMU_LD_PREFIX"], "PYTHONPATH": env["PYTHONPATH"],
               "EDGE_SLIM_TVM_RUNTIME": env["EDGE_SLIM_TVM_RUNTIME"], "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([*env["PYTHON"].split(), str(tmp_path / "guest.py"), *args], capture_output=True, text=True,
                       env=run_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "machine=aarch64" in r.stdout, r.stdout
    for name in AARCH64:
        got = np.load(tmp_path / f"{name}-out.npz")
        assert_matches({k: got[k] for k in got.files}, refs[name], f"{name} aarch64 (qemu)")


# ---------------------------------------------------------------- edge-slim run: images and JSON
def text_lines(folder: Path, n: int, seed: int = 0) -> Path:
    """Synthetic text-line crops (dark words on light paper, every other one upside down), what the OCR
    direction classifier sees in an app; drawn with Pillow's built-in font."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over a lazy dog total 42.50 invoice model edge compile 2026".split()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (int(rng.integers(160, 320)), 40), tuple(int(v) for v in rng.integers(200, 256, 3)))
        ImageDraw.Draw(img).text((4, 12), " ".join(rng.choice(words, 4)), fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        (img.rotate(180) if i % 2 else img).save(folder / f"line{i:02d}.png")
    return folder


CLS_SPEC = "size=48x192 resize=pad mean=0.5 std=0.5 color=bgr"   # rapidocr's cls preprocessing


@pytest.mark.slow
def test_run_takes_an_image_and_prints_json_values(tmp_path):
    import json
    from click.testing import CliRunner
    from edge_slim.cli.main import cli
    from edge_slim.vision.spec import image_tensor, parse_spec
    img = sorted(text_lines(tmp_path / "lines", 2).iterdir())[1]
    r = CliRunner().invoke(cli, ["run", str(compiled("ocr-cls")), "--input", f"x={img}", "--preprocess", CLS_SPEC, "--json"])
    assert r.exit_code == 0, r.output
    (out,) = json.loads(r.output)["outputs"]
    ref = ort_outputs(MODELS["ocr-cls"].path, {"x": image_tensor(img, parse_spec(CLS_SPEC))})[out["name"]]
    assert out["shape"] == [1, 2] and np.allclose(out["values"], ref, rtol=RTOL, atol=ATOL)
    r = CliRunner().invoke(cli, ["run", str(compiled("ocr-cls")), "--input", f"x={img}"])
    assert isinstance(r.exception, BadInputError) and "--preprocess" in str(r.exception)


def test_compile_stores_preprocess_for_run(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.runtime.backends.tvm_backend import run_bundle
    from edge_slim.vision.spec import image_tensor, parse_spec
    v = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    src = _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("ReduceMean", ["c"], ["y"], keepdims=0)],
                [v("x", TensorProto.FLOAT, ["N", 3, 16, 16])], [v("y", TensorProto.FLOAT, [])], [w])
    spec = parse_spec("size=16x16 mean=0.485,0.456,0.406 std=0.229,0.224,0.225")
    compile_model(src, "x86-64", out=tmp_path / "o", input_shapes={"x": [1, 3, 16, 16]}, preprocess=spec)
    assert B.open_bundle(tmp_path / "o").manifest["preprocess"] == spec
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    res = run_bundle(tmp_path / "o", {"x": str(tmp_path / "a.png")})
    ref = ort_outputs(src, {"x": image_tensor(tmp_path / "a.png", spec)})["y"]
    assert np.allclose(res["outputs"][0]["values"], ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- quantize an own model
def tiny_convnet(tmp_path) -> Path:
    """conv -> relu -> conv (a feature map: the cosine metric) -> pool -> linear."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    v = helper.make_tensor_value_info
    return _save(tmp_path, [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
                            helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]),
                            helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
                            helper.make_node("MatMul", ["f", "fc"], ["y"])],
                 [v("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                 [v("c", TensorProto.FLOAT, ["N", 32, 16, 16]), v("y", TensorProto.FLOAT, ["N", 10])],
                 [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
                  numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1, "w2"),
                  numpy_helper.from_array(rng.standard_normal((32, 10)).astype(np.float32), "fc")])


def test_quantize_any_refuses_a_broken_budget_and_writes_nothing(tmp_path):
    from edge_slim.aot.quantize.slimpajama import BudgetError
    from edge_slim.aot.quantize.any_model import quantize_onnx
    src = tiny_convnet(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    with pytest.raises(BudgetError) as e:
        quantize_onnx(src, tmp_path / "q", calib=tmp_path / "calib.npz", max_drop=0.0, max_fp32_nodes=0)
    assert e.value.exit_code == 5 and "cosine drop" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.*"))


@pytest.mark.parametrize("what, msg", [("png-no-spec", "--preprocess"), ("missing-input", "no array for input"),
                                       ("one", "at least 2"), ("wrong-shape", "the model takes")])
def test_quantize_any_bad_calibration_data_is_one_clear_error(tmp_path, what, msg):
    from PIL import Image
    from edge_slim.aot.quantize.any_model import quantize_onnx
    src = tiny_convnet(tmp_path)
    d = tmp_path / "data"
    d.mkdir()
    if what == "png-no-spec":
        Image.new("RGB", (20, 20)).save(d / "a.png")
    elif what == "missing-input":
        np.savez(d / "a.npz", y=np.zeros((1, 3, 16, 16), np.float32))
    elif what == "one":
        np.save(d / "a.npy", np.zeros((1, 3, 16, 16), np.float32))
    else:
        np.save(d / "a.npy", np.zeros((4, 3, 8, 16), np.float32))
    with pytest.raises(BadInputError, match=msg):
        quantize_onnx(src, tmp_path / "q", calib=d)
    assert not (tmp_path / "q").exists()


def test_quantize_real_classifier_from_images_agrees_with_fp32(tmp_path):
    """The OCR direction classifier, calibrated on text-line images with its stated preprocessing:
    top-1 agreement with fp32 on the held-out quarter, the report in the manifest, and the bundle runs
    on an image through `edge-slim run` (ORT) with the stored spec."""
    from edge_slim.aot.quantize.any_model import quantize_onnx
    from edge_slim.runtime.backends.tvm_backend import run_bundle
    from edge_slim.vision.spec import parse_spec
    lines = text_lines(tmp_path / "lines", 24)
    src = need(MODELS["ocr-cls"].path)
    r = quantize_onnx(src, tmp_path / "cls-int8", calib=lines, preprocess=parse_spec(CLS_SPEC), max_drop=0.0)
    assert r["metric"] == "top1" and r["agreement"]["samples"] == 6 and r["agreement"]["top1_agreement"] == 1.0
    assert r["size"]["ratio"] <= 0.35 and r["agreement"]["cosine"] > 0.9      # issue 21's target (short names)
    m = B.open_bundle(tmp_path / "cls-int8").manifest
    assert m["precision"] == "int8" and m["quantization"]["drop"] == r["drop"] and m["preprocess"]["size"] == [48, 192]
    res = run_bundle(tmp_path / "cls-int8", {"x": str(sorted(lines.iterdir())[0])}, backend="ort")
    assert len(res["outputs"][0]["values"][0]) == 2


def test_compact_names_keeps_the_interface_and_the_outputs(tmp_path):
    """Short tensor names, no node names: the graph computes the same, its inputs and outputs keep their
    names, and the file is smaller."""
    import onnx
    import onnxruntime as ort
    from edge_slim.aot.quantize.any_model import compact_names
    src = need(MODELS["ocr-cls"].path)
    m = onnx.load(str(src))
    small = compact_names(onnx.load(str(src)))
    assert [i.name for i in small.graph.input] == [i.name for i in m.graph.input]
    assert [o.name for o in small.graph.output] == [o.name for o in m.graph.output]
    assert all(not n.name for n in small.graph.node)
    assert len(small.SerializeToString()) < len(m.SerializeToString()) - 10_000
    onnx.checker.check_model(small)
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 192)).astype(np.float32)
    run = [ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for g in (m, small)]
    np.testing.assert_array_equal(run[0], run[1])


def test_quantize_real_detector_is_a_third_of_fp32(tmp_path):
    """The OCR text detector (4.7 MB, a convnet) from .npz tensors: int8 <= 0.35x fp32, output cosine reported."""
    from edge_slim.aot.quantize.any_model import quantize_onnx
    src = need(MODELS["ocr-det"].path)
    x = np.random.default_rng(0).uniform(0, 1, (8, 3, 160, 160)).astype(np.float32)
    np.savez(tmp_path / "det.npz", x=x)
    r = quantize_onnx(src, tmp_path / "det-int8", calib=tmp_path / "det.npz", max_drop=1.0)
    assert r["metric"] == "cosine" and r["size"]["ratio"] <= 0.35, r["size"]
    out = r["agreement"]["outputs"]["sigmoid_0.tmp_0"]
    assert 0 < out["cosine_mean"] <= 1 and out["max_abs_error"] >= 0


def test_bench_times_an_own_compiled_model_beside_its_onnx(tmp_path):
    """`edge-slim bench COMPILED_DIR MODEL.onnx`: the compiled artifact (tvm) and the bare .onnx (ORT) are
    timed side by side on the compiled model's input shapes (functional check: no timing is asserted)."""
    from click.testing import CliRunner
    import json
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.cli.main import cli
    src = tiny_convnet(tmp_path)
    compile_model(src, "x86-64", out=tmp_path / "o", input_shapes={"x": [1, 3, 16, 16]})
    r = CliRunner().invoke(cli, ["bench", str(tmp_path / "o"), str(src), "--call", "model", "--threads", "1",
                                 "--rounds", "2", "--block", "2", "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[r.output.index("{"):])["results"]
    assert [(x["format"], x["backend"]) for x in rows] == [("tvm", "tvm"), ("onnx", "ort")]
    assert all(x["p50_ms"] > 0 for x in rows) and rows[1]["baseline"] == rows[0]["label"]
    r = CliRunner().invoke(cli, ["bench", str(src), str(tmp_path / "o"), "--call", "model", "--rounds", "1"])
    assert isinstance(r.exception, BadInputError) and "name the compiled bundle first" in str(r.exception)
    r = CliRunner().invoke(cli, ["bench", str(tmp_path / "o"), "--rounds", "1"])     # default --call model,ask
    assert isinstance(r.exception, BadInputError) and "pass --call model" in str(r.exception)


def test_quantized_own_model_bundle_compiles_and_matches_its_onnx(tmp_path):
    """quantize MODEL.onnx -> an int8 ONNX bundle -> compile (int8 kept) -> TVM agrees with ORT on that graph."""
    from edge_slim.aot.lower.pipeline import compile_model
    from edge_slim.aot.quantize.any_model import quantize_onnx
    from edge_slim.runtime.backends.tvm_backend import TvmBackend
    src = tiny_convnet(tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    quantize_onnx(src, tmp_path / "q", calib=tmp_path / "calib.npz", max_drop=1.0)
    m = compile_model(tmp_path / "q", "x86-64", out=tmp_path / "c", input_shapes={"x": [1, 3, 16, 16]})
    assert m["precision"] == "int8" and m["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(tmp_path / "q" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    be = TvmBackend(B.open_bundle(tmp_path / "c"), threads=1)
    for i in range(2):
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x[i:i + 1]})))
        got = be.run({"x": x[i:i + 1]})
        for k in ref:   # activations are rounded to uint8 in both; a last-bit difference can move one step
            assert np.abs(got[k] - ref[k]).max() <= 0.05 * max(1.0, float(np.abs(ref[k]).max())), k


def test_cli_quantize_onnx_writes_a_bundle_or_exits_5_with_one_line(tmp_path):
    import json
    src = tiny_convnet(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    base = [sys.executable, "-m", "edge_slim", "quantize", str(src), "--calib", str(tmp_path / "calib.npz")]
    p = subprocess.run([*base, "-o", str(tmp_path / "ok"), "--max-accuracy-drop", "1", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["metric"] == "cosine" and r["bundle"] == str(tmp_path / "ok") and B.open_bundle(tmp_path / "ok")
    p = subprocess.run([*base, "-o", str(tmp_path / "no"), "--max-accuracy-drop", "0", "--max-fp32-nodes", "0"],
                       capture_output=True, text=True, timeout=600)
    errors = [line for line in p.stderr.splitlines() if line.startswith("edge-slim: error:")]
    assert p.returncode == 5 and len(errors) == 1 and "cosine drop" in errors[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "no").exists()
    p = subprocess.run(base[:5], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "--calib" in p.stderr
