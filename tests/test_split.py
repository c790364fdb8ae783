"""Image once, many texts (edge_slim.runtime.split): the graph cut into its image part and its text part.

Oracle: the whole graph on the same backend (`backend.run`), which is what every call ran before.
"""
import shutil
import subprocess

import numpy as np
import pytest

import edge_slim
from conftest import EXAMPLES, shipped_dir
from edge_slim.errors import BadInputError
from edge_slim.runtime import bundle as B
from edge_slim.runtime.backends import available, backend_class
from edge_slim.runtime.onnx_proto import dtype_code, load_model, parse_model, tensor_value_info, write_subgraph
from edge_slim.runtime.split import (batch_consts, dynamic_quantize_inputs, plan_split, quantize_per_text,
                                     texts_agree)

BACKENDS = [b for b in ("ort", "numpy") if available(b)]
MODELS = ["slimpajama-tiny", "slimpajama-tiny-int8"]
IMAGES = [EXAMPLES / "images" / "scene1.png", EXAMPLES / "images" / "renderers" / "raycast-0.png"]
QUESTIONS = ["how many cubes are there?", "what color is the large sphere?", "is there a cylinder?",
             "what shape is the red object?", "what size is the blue object?", "is there a green cone?",
             "how many objects are there?", "what color is the cube?"]


def model_path(name):
    return shipped_dir().parent / name / "model.onnx"


@pytest.mark.parametrize("name", MODELS)
def test_plan_cuts_between_image_and_text(name):
    g = load_model(model_path(name)).graph
    sp = plan_split(g)
    assert sp is not None and sp.cut
    assert set(sp.image_outputs) == {"image_embed", "describe_memory"}
    assert set(sp.text_outputs) == {"answer_logits", "match_logit", "box", "box_score", "text_embed"}
    assert not set(sp.image_nodes) & set(sp.text_nodes)
    # no image-part node reads the tokens, directly or through another node
    reads_tokens = set()
    for k, n in enumerate(g.nodes):
        if "tokens" in n.inputs or any(i in reads_tokens for i in n.inputs):
            reads_tokens.update(n.outputs)
            assert k not in sp.image_nodes
    produced = {o for k in sp.image_nodes for o in g.nodes[k].outputs}
    assert set(sp.cut) <= produced and not set(sp.cut) & reads_tokens
    # the text part reads nothing of the image except the cut
    image_side = produced - set(sp.cut)
    assert not {i for k in sp.text_nodes for i in g.nodes[k].inputs} & (image_side | {"image"})


def test_no_cut_without_both_inputs():
    g = load_model(model_path("slimpajama-tiny")).graph
    g.inputs = [vi for vi in g.inputs if vi.name != "tokens"]
    assert plan_split(g) is None


def test_written_subgraph_is_a_valid_model():
    m = load_model(model_path("slimpajama-tiny-int8"))
    sp = plan_split(m.graph)
    outs = [tensor_value_info(c) for c in sp.cut] + list(sp.image_outputs)
    data = write_subgraph(m, list(sp.image_nodes), ["image"], outs, "image_part")
    back = parse_model(data, "image part")
    assert [vi.name for vi in back.graph.inputs] == ["image"]
    assert [vi.name for vi in back.graph.outputs] == list(sp.cut + sp.image_outputs)
    assert len(back.graph.nodes) == len(sp.image_nodes) and back.opsets == m.opsets
    used = {i for n in back.graph.nodes for i in n.inputs}
    assert set(back.graph.initializers) <= used                  # only the initializers the part reads
    for k, v in back.graph.initializers.items():
        assert np.array_equal(v, m.graph.initializers[k])
    onnx = pytest.importorskip("onnx")
    state = backend_class("numpy")(B.open_bundle(model_path("slimpajama-tiny-int8").parent)).encode(
        {"image": np.zeros((1, 3, 96, 96), np.float32)})
    typed = write_subgraph(m, list(sp.image_nodes), ["image"],
                           [tensor_value_info(c, dtype_code(state[c].dtype), state[c].shape) for c in sp.cut]
                           + list(sp.image_outputs))
    onnx.checker.check_model(onnx.load_from_string(typed))


def feeds(seed):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((1, 16), np.int64)
    tokens[0, 0] = 2
    tokens[0, 1:8] = rng.integers(5, 40, 7)
    return rng.standard_normal((1, 3, 96, 96)).astype(np.float32), tokens


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_parts_compute_what_the_whole_graph_does(backend, name):
    be = backend_class(backend)(B.open_bundle(shipped_dir().parent / name), threads=1)
    assert be.split() is not None
    for seed in range(3):
        image, tokens = feeds(seed)
        whole = be.run({"image": image, "tokens": tokens})
        parts = be.run_text(be.encode({"image": image}), {"tokens": tokens})
        assert set(parts) == set(whole)
        for k in whole:
            if backend == "numpy":
                assert np.array_equal(parts[k], whole[k]), k       # the same steps on the same values
            else:   # ORT fuses the float ops next to the cut differently: rounding only
                np.testing.assert_allclose(parts[k], whole[k], rtol=1e-4, atol=1e-5, err_msg=k)
        assert np.argmax(parts["answer_logits"]) == np.argmax(whole["answer_logits"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_encoded_image_answers_as_the_whole_graph(backend, name):
    s = edge_slim.load(shipped_dir().parent / name, backend=backend, threads=1)
    for img in IMAGES:
        enc = s.encode(img)
        assert enc.state is not None
        x = s.prepare_image(img)[0]
        many = s.ask(img, QUESTIONS)
        for q, a, b in zip(QUESTIONS, many, s.ask(enc, QUESTIONS)):
            whole = s.backend.run({"image": x, "tokens": s._tokens(q, "ask")})
            p = s._answer_probs(whole["answer_logits"][0].astype(np.float64), q)
            assert a.answer == b.answer == s.answers[int(np.argmax(p))]
            assert abs(a.score - float(p.max())) < 1e-5
        texts = ["a red cube", "a small blue sphere", "two cylinders"]
        m = s.match(enc, texts)
        want = [float(s.backend.run({"image": x, "tokens": s._tokens(t, "match")})["match_logit"][0]) for t in texts]
        assert m.best == int(np.argmax(want))
        assert s.locate(enc, "the red cube").box == s.locate(img, "the red cube").box
        assert s.describe(enc).text == s.describe(img).text
        np.testing.assert_allclose(s.embed_image(enc), s.embed_image(img), atol=1e-6)


def test_text_part_batches_where_each_op_keeps_texts_apart():
    g = load_model(model_path("slimpajama-tiny")).graph
    sp = plan_split(g)
    over = batch_consts(g, sp)
    reshapes = {g.nodes[k].inputs[1] for k in sp.text_nodes if g.nodes[k].op_type == "Reshape"}
    assert over is not None and set(over) == reshapes
    for k, v in over.items():
        assert v[0] == -1 and np.array_equal(v[1:], g.initializers[k][1:]) and g.initializers[k][0] == 1
    # int8: DynamicQuantizeLinear's one scale per tensor would mix the questions
    g8 = load_model(model_path("slimpajama-tiny-int8")).graph
    assert any(g8.nodes[k].op_type == "DynamicQuantizeLinear" for k in plan_split(g8).text_nodes)
    assert batch_consts(g8, plan_split(g8)) is None
    # an op that moves the texts' axis: refused
    t = next(k for k in sp.text_nodes if g.nodes[k].op_type == "Transpose")
    g.nodes[t].attrs["perm"] = [1, 0, 2, 3]
    assert batch_consts(g, sp) is None


def test_texts_agree_catches_a_batch_that_mixes_texts():
    def rowwise(t):
        return {"y": t.astype(np.float64) * 2 + 1}

    def mixing(t):            # one statistic over the whole batch, as DynamicQuantizeLinear's scale
        x = t.astype(np.float64)
        return {"y": x / (np.abs(x).max() + 1)}
    assert texts_agree(rowwise, (1, 16), ["y"])
    assert not texts_agree(mixing, (1, 16), ["y"])
    assert not texts_agree(lambda t: {"y": np.zeros((1, 3))}, (1, 16), ["y"])     # no row per text

    def refuses(t):
        if len(t) > 1:
            raise RuntimeError("Concat: batch 2 against 1")
        return rowwise(t)
    assert not texts_agree(refuses, (1, 16), ["y"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["slimpajama-tiny", "slimpajama-nano", "slimpajama-tiny-int8", "slimpajama-nano-int8"])
def test_one_run_of_many_texts_equals_one_run_each(backend, name):
    be = backend_class(backend)(B.open_bundle(shipped_dir().parent / name), threads=1)
    image, _ = feeds(0)
    state = be.encode({"image": image})
    # int8: ONNX Runtime runs the per-text rewrite of DynamicQuantizeLinear (quantize_per_text); NumPy one text a run
    assert be.texts_at_once == (not name.endswith("int8") or backend == "ort")
    toks = np.concatenate([feeds(seed)[1] for seed in range(8)])
    if not be.texts_at_once:
        return
    both = be.run_text(state, {"tokens": toks})
    for i in range(len(toks)):
        one = be.run_text(state, {"tokens": toks[i:i + 1]})
        for k in be.split().text_outputs:
            np.testing.assert_allclose(both[k][i:i + 1], one[k], rtol=1e-4, atol=1e-5, err_msg=k)
        whole = be.run({"image": image, "tokens": toks[i:i + 1]})
        assert np.argmax(both["answer_logits"][i]) == np.argmax(whole["answer_logits"][0])


def test_an_encoded_image_belongs_to_its_session():
    a, b = edge_slim.load(), edge_slim.load()
    enc = a.encode(IMAGES[0])
    with pytest.raises(BadInputError, match="another session"):
        b.ask(enc, "is there a cube?")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slimpajama-tiny", "slimpajama-tiny-int8"])
def test_compiled_artifact_has_parts_that_compute_what_model_so_does(name):
    """int8: texts.so is compiled from the per-text rewrite (quantize_per_text) and keeps the integer kernels."""
    pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
    from compile_helpers import WORK, compiled
    from edge_slim.aot.lower.pipeline import compile_model
    if name.endswith("int8"):
        out = WORK / "x86-64-shipped-int8"
        compile_model(shipped_dir().parent / name, "x86-64", out=out)
        nm = shutil.which("nm")
        if nm is not None:   # the rewrite's matmuls (no zero point for A) run on as many integer kernels as text.so's

            def kernels(lib):
                syms = subprocess.run([nm, "-D", "--defined-only", str(out / lib)], capture_output=True, text=True)
                return syms.stdout.count("int8_matmul_x86_avx2_madd")
            assert kernels("texts.so") == kernels("text.so") >= 8
    else:
        out = compiled("x86-64")
    m = B.open_bundle(out).manifest
    assert set(m["split"]) == {"image", "text", "texts"} and {"image.so", "text.so", "texts.so"} <= set(m["files"])
    assert m["split"]["texts"]["batch"] == 8 and m["split"]["texts"]["inputs"][-1]["shape"] == [8, 16]
    be = backend_class("tvm")(B.open_bundle(out), threads=1)
    sp = be.split()
    assert sp is not None and set(sp.image_outputs) == {"image_embed", "describe_memory"} and be.texts_at_once
    for seed in range(2):
        image, tokens = feeds(seed)
        whole = be.run({"image": image, "tokens": tokens})
        state = be.encode({"image": image})
        parts = be.run_text(state, {"tokens": tokens})
        for k in whole:
            np.testing.assert_allclose(parts[k], whole[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # 11 texts: one full group of 8 on texts.so and one of 3 padded to 8; each row as text.so computes it
    toks = np.concatenate([feeds(seed)[1] for seed in range(11)])
    many = be.run_text(state, {"tokens": toks})
    assert many["answer_logits"].shape == (11, 24) and many["match_logit"].shape == (11,)
    for i in range(len(toks)):
        one = be.run_text(state, {"tokens": toks[i:i + 1]})
        for k in sp.text_outputs:
            np.testing.assert_allclose(many[k][i:i + 1], one[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} text {i}")
    s = edge_slim.load(out, backend="tvm", threads=1)
    o = edge_slim.load(name, backend="ort", threads=1)
    assert [a.answer for a in s.ask(IMAGES[1], QUESTIONS)] == [a.answer for a in o.ask(IMAGES[1], QUESTIONS)]


def test_compile_no_split_leaves_the_parts_out(tmp_path):
    pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
    from conftest import cli
    p = cli("compile", "slimpajama-tiny-int8", "-t", "x86-64", "--no-split", "-o", tmp_path / "a", "--json")
    assert p.returncode == 0, p.stderr
    m = B.open_bundle(tmp_path / "a").manifest
    assert "split" not in m and "image.so" not in m["files"] and "texts.so" not in m["files"]
    s = edge_slim.load(tmp_path / "a", backend="tvm", threads=1)
    enc = s.encode(IMAGES[0])
    assert enc.state is None                         # whole-graph calls, the same answers
    o = edge_slim.load("slimpajama-tiny-int8", backend="ort", threads=1)
    assert s.ask(enc, QUESTIONS[0]).answer == o.ask(IMAGES[0], QUESTIONS[0]).answer


def _dql_model(rows: int) -> bytes:
    """image -> Relu -> + tokens [rows, 6, 8] -> DynamicQuantizeLinear -> MatMulInteger (the int8 form's pattern,
    with a weight zero point) and, on the mean over tokens ([rows, 8], rank 2), another; outputs the int32 sums
    and the dequantized products."""
    pytest.importorskip("onnx")
    from onnx import TensorProto as TP, helper as h, numpy_helper as nh
    rng = np.random.default_rng(3)
    w = rng.integers(-63, 64, (8, 5)).astype(np.int8)
    w2 = rng.integers(-63, 64, (8, 3)).astype(np.int8)
    inits = [nh.from_array(w, "w"), nh.from_array(np.array(2, np.int8), "wz"), nh.from_array(w2, "w2"),
             nh.from_array(np.full(5, 0.01, np.float32), "ws"), nh.from_array(np.array([1], np.int64), "ax")]
    nodes = [h.make_node("Relu", ["image"], ["img"]), h.make_node("Add", ["tokens", "img"], ["x"]),
             h.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"]),
             h.make_node("MatMulInteger", ["y", "w", "z", "wz"], ["acc"]),
             h.make_node("Mul", ["s", "ws"], ["sws"]), h.make_node("Cast", ["acc"], ["accf"], to=TP.FLOAT),
             h.make_node("Mul", ["accf", "sws"], ["out"]),
             h.make_node("ReduceMean", ["x", "ax"], ["m"], keepdims=0),
             h.make_node("DynamicQuantizeLinear", ["m"], ["my", "ms", "mz"]),
             h.make_node("MatMulInteger", ["my", "w2", "mz"], ["acc2"])]
    g = h.make_graph(nodes, "dql", [h.make_tensor_value_info("image", TP.FLOAT, [1, 8]),
                                    h.make_tensor_value_info("tokens", TP.FLOAT, [rows, 6, 8])],
                     [h.make_tensor_value_info(n, t, None) for n, t in
                      (("acc", TP.INT32), ("out", TP.FLOAT), ("acc2", TP.INT32))], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 20)], ir_version=9).SerializeToString()


def test_per_text_quantization_computes_each_text_as_a_run_of_it_alone():
    """The oracle is ONNX Runtime's own DynamicQuantizeLinear on one text at a time: the rewrite's integer sums
    and dequantized products equal it bit for bit, for texts whose range is all positive, all negative, all
    zero (ORT's scale 1), tiny or wide, and one whose zero point lands on a rounding tie."""
    ort = pytest.importorskip("onnxruntime")
    model = parse_model(_dql_model(1))
    g = model.graph
    sp = plan_split(g)
    assert dynamic_quantize_inputs(g, sp) == ["x", "m"]
    assert batch_consts(g, sp) is None
    rw = quantize_per_text(g, sp, {"x": 3, "m": 2})
    assert rw is not None and not any(getattr(n, "op_type", "") == "DynamicQuantizeLinear" for n in rw.nodes)
    over = batch_consts(g, sp, rewrite=rw)
    assert over == {}
    image = np.zeros((1, 8), np.float32)           # Relu(0) = 0: the tokens are the quantized values
    text_in = [tensor_value_info("img", dtype_code(np.float32), (1, 8)),
               tensor_value_info("tokens", dtype_code(np.float32), ("texts", 6, 8))]
    batched = ort.InferenceSession(write_subgraph(model, list(rw.nodes), text_in, ["acc", "out", "acc2"], "t",
                                                  replace=rw.initializers), providers=["CPUExecutionProvider"])
    whole = ort.InferenceSession(model.raw, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    texts = np.stack([rng.normal(0, 1, (6, 8)), np.abs(rng.normal(2, 1, (6, 8))), -np.abs(rng.normal(0, 5, (6, 8))),
                      np.zeros((6, 8)), rng.normal(0, 1e-6, (6, 8)), rng.normal(0, 300, (6, 8)),
                      np.linspace(-3.5, 251.5, 48).reshape(6, 8)]).astype(np.float32)
    got = batched.run(None, {"img": image, "tokens": texts})
    for i in range(len(texts)):
        want = whole.run(None, {"image": image, "tokens": texts[i:i + 1]})
        for name, b, w in zip(("acc", "out", "acc2"), got, want):
            assert b.dtype == w.dtype and np.array_equal(b[i:i + 1], w), (name, i)
    # a quantized input feeding anything but MatMulInteger (here an Identity of its zero point): not rewritten
    from edge_slim.runtime.onnx_proto import Node, ValueInfo
    g.nodes.append(Node("Identity", ["z"], ["zz"]))
    g.outputs.append(ValueInfo("zz"))
    sp2 = plan_split(g)
    assert len(sp2.text_nodes) == len(sp.text_nodes) + 1 and quantize_per_text(g, sp2, {"x": 3, "m": 2}) is None


def test_ort_int8_session_answers_many_questions_in_one_run():
    """Through the public API: the shipped int8 bundle on ONNX Runtime answers 8 questions in one `ask` as 8 asks
    do, and builds the per-text rewrite only when several texts first come."""
    s = edge_slim.load("slimpajama-tiny-int8", backend="ort", threads=1)
    enc = s.encode(IMAGES[0])
    assert s.backend.texts_at_once and s.backend._parts[3] is None     # not built by encode
    many = s.ask(enc, QUESTIONS)
    assert s.backend._parts[3] is not None
    for q, a in zip(QUESTIONS, many):
        one = s.ask(enc, q)
        assert a.answer == one.answer and abs(a.score - one.score) < 1e-5, q
    m = s.match(enc, ["a red cube", "two spheres", "a green cylinder"])
    assert m.best == s.match(IMAGES[0], ["a red cube", "two spheres", "a green cylinder"]).best


def test_ort_int8_without_the_rewrite_runs_one_text_a_run(monkeypatch):
    """Where the rewrite does not apply, several texts still get one run each and the same answers."""
    import edge_slim.runtime.split as S
    s = edge_slim.load("slimpajama-tiny-int8", backend="ort", threads=1)
    enc = s.encode(IMAGES[0])
    monkeypatch.setattr(S, "quantize_per_text", lambda *a: None)
    many = s.ask(enc, QUESTIONS[:3])
    assert s.backend._parts[3] is None and not s.backend.texts_at_once
    assert [a.answer for a in many] == [s.ask(enc, q).answer for q in QUESTIONS[:3]]
