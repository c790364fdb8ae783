"""`edge-slim quantize`: int8 forms, the accuracy-budget loop, calibration folders, fp16 export.

The model is the shipped SlimPajama-Tiny when present, else a random-init one exported here
(random weights: the plumbing is real, accuracy numbers are not). The budget-loop tests replace
the held-out evaluation with a scorer that penalizes three chosen nodes, so the loop's decisions
are deterministic; one slow test runs the loop with the real evaluation.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge_slim.aot.quantize import calibration as C  # noqa: E402
from edge_slim.aot.quantize import slimpajama as Q  # noqa: E402
from edge_slim.errors import BadInputError  # noqa: E402
from edge_slim.runtime import bundle as B  # noqa: E402

FAST = ["--calib-samples", "3", "--eval-samples", "6"]


@pytest.fixture(scope="session")
def src_bundle(tmp_path_factory):
    """The shipped bundle; else $EDGE_SLIM_TEST_FP32_BUNDLE (a dev shortcut); else a random-init export."""
    shipped = B.default_model_dir()
    if (shipped / B.MANIFEST).exists():
        return shipped
    if os.environ.get("EDGE_SLIM_TEST_FP32_BUNDLE"):
        return Path(os.environ["EDGE_SLIM_TEST_FP32_BUNDLE"])
    torch = pytest.importorskip("torch", reason="no shipped bundle and no torch to export one")
    from edge_slim.aot.model.export import export_bundle
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.scenes.grammar import ANSWERS, vocabulary
    torch.manual_seed(0)
    model = SlimPajama(config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS))).eval()
    out = tmp_path_factory.mktemp("q") / "slimpajama-tiny"
    export_bundle(model, out)
    return out


@pytest.fixture(scope="session")
def feeds(src_bundle):
    import edge_slim
    return Q.scene_feeds(edge_slim.load(src_bundle), 3)


@pytest.fixture
def bundle_here(src_bundle, tmp_path):
    dst = tmp_path / "slimpajama-tiny"
    shutil.copytree(src_bundle, dst)
    return dst


# -- forms ----------------------------------------------------------------------------------------
EXPECTED_OPS = {"dynamic-pt-rgb32": {"QLinearConv", "MatMulInteger", "Conv"},
                "dynamic-qconv-rgb32": {"QLinearConv", "MatMulInteger", "Conv"},
                "dynamic-qconv": {"QLinearConv", "MatMulInteger"}, "dynamic-wconv": {"DequantizeLinear", "MatMulInteger"},
                "dynamic": {"MatMulInteger"}, "dynamic-conv": {"ConvInteger", "MatMulInteger"},
                "static-qdq-u8": {"QuantizeLinear", "DequantizeLinear"}, "static-qdq-s8": {"QuantizeLinear"},
                "static-qop-u8": {"QLinearConv", "QLinearMatMul"}, "weight-only": {"DequantizeLinear"}}


@pytest.mark.parametrize("form", list(Q.FORMS))
def test_every_form_builds_runs_and_shrinks(form, src_bundle, feeds, tmp_path):
    src = src_bundle / "model.onnx"
    out = Q.build(src, tmp_path / "q.onnx", Q.FORMS[form], feeds)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert EXPECTED_OPS[form] <= ops
    ratio = out.stat().st_size / src.stat().st_size
    assert ratio < (0.40 if form == "dynamic" else 0.30), ratio
    ref = Q.fp32_outputs(src, feeds)
    err = Q.output_error(out, feeds, ref)
    assert np.isfinite(err) and err < 0.5, err
    assert list(tmp_path.iterdir()) == [out]  # no step files or calibration caches left behind


def test_excluded_nodes_stay_fp32_including_gemm(src_bundle, feeds, tmp_path):
    src = src_bundle / "model.onnx"
    nodes = onnx.load(str(src)).graph.node
    gemm = next(n.name for n in nodes if n.op_type == "Gemm")
    conv = next(n.name for n in nodes if n.op_type == "Conv")
    g = onnx.load(str(Q.build(src, tmp_path / "q.onnx", Q.FORMS["dynamic-qconv"], feeds, exclude=[gemm, conv]))).graph
    ops = {n.name: n.op_type for n in g.node}
    assert ops.get(conv) == "Conv"
    assert ops.get(gemm + "_MatMul") == "MatMul"  # the dynamic quantizer's own rewrite of the Gemm, left in fp32


def test_rgb32_form_keeps_only_the_image_conv_fp32(src_bundle, feeds, tmp_path):
    src = src_bundle / "model.onnx"
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    rgb = [n.name for n in model.graph.node if n.op_type == "Conv" and inits[n.input[1]].dims[1] == 3]
    form = Q.FORMS["dynamic-qconv-rgb32"]
    assert len(rgb) == 1 and rgb[0] not in Q.candidates(model, form)  # fp32 by rule, not a budget choice
    assert set(convs) - set(rgb) <= set(Q.candidates(model, form))
    g = onnx.load(str(Q.build(src, tmp_path / "q.onnx", form, feeds))).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("Conv") == 1 and ops.count("QLinearConv") == len(convs) - 1
    # a sensitivity build of one linear node leaves every conv fp32
    mm = next(n for n in Q.candidates(model, form) if n not in convs)
    ops = [n.op_type for n in onnx.load(str(Q.build(src, tmp_path / "one.onnx", form, feeds, only=[mm]))).graph.node]
    assert ops.count("Conv") == len(convs) and "QLinearConv" not in ops


@pytest.mark.parametrize("form,per_channel", [("dynamic-pt-rgb32", False), ("dynamic-qconv-rgb32", True)])
def test_weight_scales_per_tensor_or_per_channel(form, per_channel, src_bundle, feeds, tmp_path):
    g = onnx.load(str(Q.build(src_bundle / "model.onnx", tmp_path / "q.onnx", Q.FORMS[form], feeds))).graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    scales = [dims[n.input[1].replace("_quantized", "_scale")] for n in g.node if n.op_type == "MatMulInteger"]
    assert scales and all((s[0] == d[-1] if per_channel else s == [])
                          for s, d in zip(scales, (dims[n.input[1]] for n in g.node if n.op_type == "MatMulInteger")))


@pytest.mark.parametrize("bits,limit", [(7, 64), (8, 127)])
def test_weight_bits_bound_every_integer_weight(bits, limit, src_bundle, feeds, tmp_path):
    """7-bit weights ([-64, 64]) are what make a bundle exact on every CPU: no uint8 x int8 pair can reach int16's
    limit (2 x 255 x 64 = 32,640); the weights of MatMulInteger and QLinearConv must all stay inside the range."""
    from onnx import numpy_helper
    g = onnx.load(str(Q.build(src_bundle / "model.onnx", tmp_path / "q.onnx", Q.FORMS[Q.DEFAULT_FORM], feeds,
                              weight_bits=bits))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    ws = [inits[n.input[1]] for n in g.node if n.op_type == "MatMulInteger" and n.input[1] in inits]
    ws += [inits[n.input[3]] for n in g.node if n.op_type == "QLinearConv"]
    assert len(ws) > 20 and all(w.dtype == np.int8 for w in ws)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in ws) == limit
    assert Q.may_saturate(Q.FORMS[Q.DEFAULT_FORM], bits) == (bits == 8)


def test_which_arithmetics_the_budget_is_checked_in():
    f = Q.FORMS
    assert Q.check_arithmetics(f["dynamic-pt-rgb32"], 7) == ["exact"]
    assert Q.check_arithmetics(f["dynamic-pt-rgb32"], 8) == ["exact", "ort-avx2"]
    assert Q.check_arithmetics(f["weight-only"], 8) == ["exact"]      # fp32 compute: nothing to saturate
    assert Q.check_arithmetics(f["static-qdq-s8"], 8) == ["exact"]    # int8 x int8: exact on AVX2 too
    assert Q.check_arithmetics(f["dynamic-pt-rgb32"], 7, "both") == ["exact", "ort-avx2"]
    with pytest.raises(BadInputError, match="unknown arithmetic"):
        Q.check_arithmetics(f["dynamic"], 7, "avx512")


def test_fuse_parallel_linears_keeps_the_function(src_bundle, feeds, tmp_path):
    src = src_bundle / "model.onnx"
    g, groups = Q.fuse_parallel_linears(onnx.load(str(src)))
    assert groups >= 5  # q/k/v of every self-attention block at least
    onnx.save(g, str(tmp_path / "f.onnx"))
    assert Q.output_error(tmp_path / "f.onnx", feeds, Q.fp32_outputs(src, feeds)) < 1e-9
    assert sum(n.op_type == "Split" for n in g.graph.node) == groups


# -- the CLI end to end ---------------------------------------------------------------------------
def test_quantize_cli_end_to_end(bundle_here):
    p = cli("quantize", bundle_here, *FAST, "--max-accuracy-drop", "1", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    out = bundle_here.with_name("slimpajama-tiny-int8")  # the default: a sibling <name>-int8
    assert r["bundle"] == str(out)
    b = B.open_bundle(out)  # verifies every checksum
    m = b.manifest
    assert m["precision"] == "int8" and m["name"].endswith("-int8")
    q = m["quantization"]
    assert q["form"] == Q.DEFAULT_FORM and q["kept_fp32"] == [] and q["calibration"]["feeds"] >= 3
    assert set(q["eval"]["per_family"]) and {"fp32", "int8"} <= set(next(iter(q["eval"]["per_family"].values())))
    assert q["size"]["ratio"] <= 0.30, q["size"]
    assert q["integer"]["weight_range"] == [-64, 64] and q["integer"]["exact_on_every_cpu"]
    assert q["eval"]["by_arithmetic"]["exact"] == q["eval"]["int8"]
    assert r["bundle_ratio"] <= 0.30
    info = cli("info", out)
    assert info.returncode == 0 and "int8" in info.stdout and Q.DEFAULT_FORM in info.stdout

    import edge_slim
    from edge_slim.scenes import generate as G
    from edge_slim.scenes.render import MODEL_RES, render
    s = G.sample(1, 0)
    img = render(s["scene"], MODEL_RES)
    i8 = edge_slim.load(out)
    assert i8.ask(img, s["questions"][0]["text"]).answer in i8.answers
    # the NumPy backend runs every op of the shipped form: ORT's int8 graph is its oracle
    try:
        npb = edge_slim.load(out, backend="numpy")
    except Exception as e:  # pragma: no cover - depends on the NumPy backend's op coverage
        pytest.skip(f"numpy backend cannot run this form: {e}")
    tok = i8.tokenizer.encode(s["questions"][0]["text"], "ask")[None]
    x = i8.prepare_image(img)[0]
    a = i8.backend.run({"image": x, "tokens": tok})["answer_logits"]
    b_ = npb.backend.run({"image": x, "tokens": tok})["answer_logits"]
    assert np.abs(a - b_).max() <= 0.05 * max(1.0, np.abs(a).max())


def test_output_must_not_replace_input(bundle_here):
    p = cli("quantize", bundle_here, "-o", bundle_here, *FAST)
    assert_clean_error(p, 3)
    assert "replace the input" in p.stderr


def test_calib_sources_are_alternatives(bundle_here, tmp_path):
    p = cli("quantize", bundle_here, "-o", tmp_path / "o", "--calib", tmp_path, "--calib-samples", "3")
    assert_clean_error(p, 2)
    assert "alternatives" in p.stderr


def test_unknown_form_is_a_usage_error(bundle_here, tmp_path):
    p = cli("quantize", bundle_here, "-o", tmp_path / "o", "--form", "int3", *FAST)
    assert_clean_error(p, 3)
    assert "unknown form" in p.stderr and "dynamic-qconv" in p.stderr
    assert not (tmp_path / "o").exists()


# -- the budget loop, with a deterministic scorer -------------------------------------------------
def _fake_loop(monkeypatch, src_bundle):
    """Penalize 3 MatMul nodes by 1 point each while they are quantized; rank them most sensitive."""
    g = onnx.load(str(src_bundle / "model.onnx"))
    names = Q.candidates(g, Q.FORMS[Q.DEFAULT_FORM])
    fc1 = {n.name for n in g.graph.node if Q.module_of(n).endswith("mlp.fc1") or n.name.endswith("fc1/MatMul")}
    bad = [n for n in names if n in fc1][:3]  # fc1 layers are never fused, so their names survive fusion
    assert len(bad) == 3

    def scores(model_file, manifest, samples, threads=None, arithmetic=None):
        present = {n.name: n.op_type for n in onnx.load(str(model_file)).graph.node}
        n_bad = sum(present.get(b) != "MatMul" for b in bad)
        return {"vqa_accuracy": 0.9 - 0.01 * n_bad, "per_family": {"color": 0.9 - 0.01 * n_bad, "count": 0.8},
                "match_r1": 0.8, "locate_iou50": 0.7, "samples": samples, "seed": 1}

    def sens(src, form, cand, *a, **k):
        return {n: (10.0 - bad.index(n) if n in bad else 1.0) for n in cand}

    monkeypatch.setattr(Q, "task_scores", scores)
    monkeypatch.setattr(Q, "sensitivity", sens)
    return bad


def _run_inprocess(monkeypatch, capsys, *args):
    from edge_slim.cli.common import run_cli
    from edge_slim.cli.main import cli as group
    monkeypatch.setattr(sys, "argv", ["edge-slim", *map(str, args)])
    code = run_cli(group)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_tight_budget_keeps_the_sensitive_nodes(monkeypatch, capsys, src_bundle, tmp_path):
    bad = _fake_loop(monkeypatch, src_bundle)
    code, out, err = _run_inprocess(monkeypatch, capsys, "quantize", src_bundle, "-o", tmp_path / "q8", *FAST,
                                    "--max-accuracy-drop", "0.005", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["kept_fp32"] == bad  # most sensitive first
    assert [t["kept_fp32"] for t in r["budget_trials"]] == [0, 1, 2, 3]
    assert r["drop"] == 0 and all("sensitivity rank" in r["kept_fp32_why"][n] for n in bad)
    g = onnx.load(str(tmp_path / "q8" / "model.onnx")).graph
    assert sum(n.op_type == "MatMul" and n.name in bad for n in g.node) == 3
    assert B.open_bundle(tmp_path / "q8").manifest["quantization"]["kept_fp32"] == bad


def test_budget_holds_for_the_worst_arithmetic(monkeypatch, capsys, src_bundle, tmp_path):
    """8-bit weights are checked in exact and in ORT's AVX2 arithmetic; a drop only the AVX2 form shows (here
    1 point per sensitive node) must still be fixed, and the manifest records both figures and the form."""
    bad = _fake_loop(monkeypatch, src_bundle)
    exact_only = Q.task_scores
    seen = []

    def scores(model_file, manifest, samples, threads=None, arithmetic=None):
        seen.append(arithmetic)
        r = exact_only(model_file, manifest, samples, threads)
        if arithmetic == "exact":
            return {**r, "vqa_accuracy": 0.9, "per_family": {"color": 0.9, "count": 0.8}}
        return r

    monkeypatch.setattr(Q, "task_scores", scores)
    code, out, err = _run_inprocess(monkeypatch, capsys, "quantize", src_bundle, "-o", tmp_path / "q8", *FAST,
                                    "--weight-bits", "8", "--max-accuracy-drop", "0.005", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["kept_fp32"] == bad and set(seen) == {None, "exact", "ort-avx2"}  # None: the fp32 model
    assert set(r["eval"]["by_arithmetic"]) == {"exact", "ort-avx2"}
    i = B.open_bundle(tmp_path / "q8").manifest["quantization"]["integer"]
    assert i["weight_bits"] == 8 and not i["exact_on_every_cpu"] and i["checked_arithmetic"] == ["exact", "ort-avx2"]


def test_failing_budget_writes_nothing_and_exits_5(monkeypatch, capsys, src_bundle, tmp_path):
    _fake_loop(monkeypatch, src_bundle)
    code, out, err = _run_inprocess(monkeypatch, capsys, "quantize", src_bundle, "-o", tmp_path / "q8", *FAST,
                                    "--max-accuracy-drop", "0.005", "--max-fp32-nodes", "2")
    assert code == 5
    assert err.count("edge-slim: error:") == 1 and "exceeds the budget" in err and "1.00 points" in err
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging directory


def test_real_budget_loop_fits_by_keeping_nodes(bundle_here, tmp_path):
    """Budget 0 with the real evaluation: the loop must end at a drop of 0 (fp32 fallback bounds it)."""
    p = cli("quantize", bundle_here, "-o", tmp_path / "q8", "--calib-samples", "2", "--eval-samples", "4",
            "--max-accuracy-drop", "0", "--max-fp32-nodes", "100", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["drop"] <= 0
    if r["kept_fp32"]:
        assert "sensitivity" in p.stderr and len(r["budget_trials"]) >= 2


# -- calibration folders --------------------------------------------------------------------------
def _folder(tmp_path, lines):
    from PIL import Image
    d = tmp_path / "calib"
    d.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(d / "red.png")
    (d / "notes.txt").write_text("not an image")
    (d / C.CALIB_FILE).write_text("\n".join(lines) + "\n")
    return d


def test_calib_folder_parses(tmp_path, src_bundle):
    import edge_slim
    d = _folder(tmp_path, ['# comment', '', '{"image": "red.png", "text": "what color is the cube?"}',
                           '{"image": "red.png", "text": ["a red cube", "a blue cone"], "task": "match"}'])
    entries = C.read_calib_folder(d)
    assert [(p.name, t, k) for p, t, k in entries] == [("red.png", "what color is the cube?", "ask"),
                                                       ("red.png", "a red cube", "match"), ("red.png", "a blue cone", "match")]
    f = Q.folder_feeds(edge_slim.load(src_bundle), d)
    assert len(f) == 3 and f[0]["image"].shape == (1, 3, 96, 96) and f[0]["tokens"].dtype == np.int64


@pytest.mark.parametrize("line,phrase", [
    ('{"image": "missing.png", "text": "x"}', "does not exist"),
    ('{"image": "../outside.png", "text": "x"}', "outside the calibration folder"),
    ('{"image": "red.png", "text": "x", "task": "count"}', "is not one of"),
    ('{"image": "red.png", "text": ""}', "non-empty string"),
    ('{"image": "red.png", "txt": "x"}', "unknown key"),
    ('not json', "not a JSON object"),
    ('[1, 2]', "not a JSON object"),
])
def test_calib_folder_bad_entry(tmp_path, line, phrase):
    (tmp_path / "outside.png").write_bytes(b"")
    d = _folder(tmp_path, ['{"image": "red.png", "text": "what shape is it?"}', line])
    with pytest.raises(BadInputError, match="line 2") as e:
        C.read_calib_folder(d)
    assert phrase in str(e.value)


def test_calib_folder_errors_through_the_cli(bundle_here, tmp_path):
    d = _folder(tmp_path, ['{"image": "red.png", "text": "ok"}', '{"image": "nope.png", "text": "x"}',
                           '{"image": "notes.txt", "text": "x"}', 'oops'])
    p = cli("quantize", bundle_here, "-o", tmp_path / "o", "--calib", d)
    assert_clean_error(p, 3)
    assert len(p.stderr.strip().splitlines()) == 1
    assert "line 2" in p.stderr and "1 more bad entry" in p.stderr  # line 4; notes.txt exists, caught at decode
    assert not (tmp_path / "o").exists()
    # an entry whose file is not an image is caught when decoded, naming the file
    d2 = tmp_path / "c2"
    d2.mkdir()
    (d2 / "notes.txt").write_text("not an image")
    (d2 / C.CALIB_FILE).write_text('{"image": "notes.txt", "text": "x"}\n')
    p = cli("quantize", bundle_here, "-o", tmp_path / "o", "--calib", d2)
    assert_clean_error(p, 3)
    assert "notes.txt" in p.stderr and "not a readable image" in p.stderr
    for missing in (tmp_path / "nowhere", tmp_path / "empty"):
        if missing.name == "empty":
            missing.mkdir()
        assert_clean_error(cli("quantize", bundle_here, "-o", tmp_path / "o", "--calib", missing), 3)


# -- fp16 -----------------------------------------------------------------------------------------
def test_fp16_keeps_norms_in_fp32_and_io_in_fp32(src_bundle, feeds, tmp_path):
    from edge_slim.aot.quantize.fp16 import max_output_diff, to_fp16
    src = src_bundle / "model.onnx"
    half, kept = to_fp16(onnx.load(str(src)))
    ops = {n.name: n.op_type for n in half.graph.node}
    assert kept and {ops[k] for k in kept} >= {"LayerNormalization", "Softmax"}
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in half.graph.input if i.name == "image")
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in half.graph.output)
    big = [i for i in half.graph.initializer if len(i.dims) == 2 and i.dims[0] * i.dims[1] >= 128 * 128]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    onnx.save(half, str(tmp_path / "h.onnx"))
    assert (tmp_path / "h.onnx").stat().st_size < 0.55 * src.stat().st_size
    assert max_output_diff(src, tmp_path / "h.onnx", feeds) < 0.05


def test_fp16_cli(bundle_here):
    p = cli("quantize", bundle_here, "--precision", "fp16", "--eval-samples", "4", "--max-accuracy-drop", "1", "--json")
    assert p.returncode == 0, p.stderr
    m = B.open_bundle(bundle_here.with_name("slimpajama-tiny-fp16")).manifest
    assert m["precision"] == "fp16" and m["quantization"]["form"] == "fp16-mixed"
