"""describe: the caption grammar, parser and scorer; the caption decoder's export, decoding on ort and
numpy, training signal and CLI; and answers always of the question's type."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES, assert_clean_error, cli
from edge_slim.errors import BadInputError
from edge_slim.scenes import caption as C
from edge_slim.scenes import generate as G
from edge_slim.scenes.families import FAMILY_ANSWERS, answer_type_ok, question_family

IMG = EXAMPLES / "images" / "scene0.png"
SMALL = {"dim": 48, "heads": 2, "stem": (8, 16, 32), "image_layers": 1, "text_layers": 1, "cross_layers": 1,
         "fusion_layers": 1, "embed_dim": 16}


def _obj(size, color, shape, x, y):
    return {"size": size, "color": color, "shape": shape, "x": x, "y": y, "r": 6}


# a hand-made scene: two identical small red cubes (twins), a large blue sphere
SCENE = {"objects": [_obj("small", "red", "cube", 10, 50), _obj("large", "blue", "sphere", 40, 10),
                     _obj("small", "red", "cube", 70, 60)]}


# ---- caption grammar, parser, scorer -------------------------------------------------------

def test_reference_caption_of_a_hand_made_scene():
    assert C.caption(SCENE) == "a small red cube, a large blue sphere above it, a small red cube below it"


def test_parser_inverts_the_generator():
    for i in range(300):
        scene = G.sample_scene(0, i)
        p = C.parse_caption(C.caption(scene))
        objs = C.ordered(scene["objects"])
        assert p.objects == [{k: o[k] for k in C.ATTRS} for o in objs]
        want = [(k, C.relation_between(objs[k], objs[k - 1], G.scene_margin(scene)), k - 1) for k in range(1, len(objs))]
        assert p.relations == [w for w in want if w[1] is not None] and not p.bad
        ids = C.encode_caption(C.caption(scene))
        assert ids[0] == C.BOS and C.decode_caption(ids) == C.caption(scene) and len(ids) == C.MAX_TOKENS


def test_parser_rejects_text_outside_the_grammar():
    for bad in ("", "a red cube", "a small red cube left of it", "a small red cube, two blue spheres",
                "a small red cube, a large blue sphere near it"):
        with pytest.raises(BadInputError):
            C.parse_caption(bad)
    p = C.parse_caption("A small red cube , a LARGE blue sphere above  it.")  # case, spaces, full stop
    assert len(p.objects) == 2 and p.relations == [(1, "above", 0)]
    with pytest.raises(BadInputError):
        C.encode_caption("a small red dodecahedron")


def _score(text):
    return C.score_caption(text, SCENE)


def test_scorer_on_hand_made_cases():
    s = _score("a small red cube, a large blue sphere above it, a small red cube below it")
    assert (s.mentioned, s.matched, s.actual, s.relations, s.relations_true, s.exact) == (3, 3, 3, 2, 2, True)
    s = _score("a small red cube, a large green sphere above it, a small red cube below it")  # wrong colour
    assert (s.mentioned, s.matched, s.exact) == (3, 2, False)
    assert s.relations == 2 and s.relations_true == 0  # no large green sphere to be above or below anything
    s = _score("a small red cube, a large blue sphere above it")  # one twin missing
    assert (s.mentioned, s.matched, s.actual, s.exact) == (2, 2, 3, False)
    s = _score("a large blue sphere, a large blue sphere below it, a small red cube, a small red cube")  # duplicate
    assert (s.mentioned, s.matched, s.exact) == (4, 3, False)  # the second sphere matches nothing: one to one
    assert s.relations == 1 and s.relations_true == 0  # the only large blue sphere is not below itself
    s = _score("a small red cube, a large blue sphere below it, a small red cube below it")  # a false relation
    assert (s.matched, s.relations, s.relations_true, s.exact) == (3, 2, 1, False)
    s = _score("a small red cube, some purple thing, a large blue sphere")  # an unparseable phrase
    assert (s.mentioned, s.matched, s.exact) == (3, 2, False)
    s = _score("")
    assert (s.mentioned, s.matched, s.actual) == (0, 0, 3)


def test_summary_is_micro_averaged():
    scores = [_score("a small red cube, a large blue sphere above it, a small red cube below it"),
              _score("a large blue sphere, a large blue sphere below it, a small red cube, a small red cube"),
              _score("a small red cube")]
    r = C.summarize(scores)
    assert r["object_precision"] == round((3 + 3 + 1) / (3 + 4 + 1), 4)
    assert r["object_recall"] == round((3 + 3 + 1) / 9, 4)
    assert r["exact_scene"] == round(1 / 3, 4)
    assert r["relation_precision"] == round(2 / 3, 4) and r["samples"] == 3


# ---- answers of the question's type --------------------------------------------------------

def test_question_family_from_its_words():
    from edge_slim.aot.model.data import make_tokenizer
    tok = make_tokenizer(16)
    rng = np.random.default_rng(0)
    n = 0
    for i in range(60):
        scene = G.sample_scene(3, i)
        for fam in FAMILY_ANSWERS:
            q = G.question(scene, fam, rng)
            if q is not None:
                assert question_family(tok.words(q["text"])) == fam and answer_type_ok(fam, q["answer"])
                n += 1
    assert n > 300
    assert question_family(tok.words("what colour is the big ball?")) == "color"  # synonyms
    assert question_family(tok.words("describe the picture")) is None


class _FixedLogits:
    """A backend whose answer head always prefers '3', then 'yes', over everything else."""
    name = "fixed"

    def __init__(self, answers):
        self.logits = np.zeros((1, len(answers)), np.float32)
        self.logits[0, answers.index("3")] = 9.0
        self.logits[0, answers.index("yes")] = 5.0
        self.logits[0, answers.index("blue")] = 1.0
        self.logits[0, answers.index("large")] = 0.5

    def run(self, feeds):
        return {"answer_logits": self.logits}


def test_ask_answers_only_with_the_question_type():
    import edge_slim
    s = edge_slim.load(backend="numpy")
    s.backend = _FixedLogits(s.answers)
    assert s.ask(IMG, "how many cubes are there?").answer == "3"
    a = s.ask(IMG, "what color is the cube?", top_k=10)
    assert a.answer == "blue" and len(a.top) == 8 and all(w in FAMILY_ANSWERS["color"] for w, _ in a.top)
    assert abs(sum(p for _, p in a.top) - 1) < 1e-4
    assert s.ask(IMG, "what size is the cube?").answer == "large"
    assert s.ask(IMG, "is the cube left of the sphere?").answer == "yes"
    assert s.ask(IMG, "what shape is the red object?").answer in FAMILY_ANSWERS["shape"]
    assert s.ask(IMG, "tell me about the cube").answer == "3"  # not a grammar question: no restriction


class _Always3:
    """A session stub that answers '3' to everything (to check the type-error counter)."""

    def ask(self, img, qs):
        from edge_slim.runtime.session import Answer
        return [Answer("3", 1.0, [["3", 1.0]], 0.0, "stub") for _ in qs]

    def match(self, img, texts):
        from edge_slim.runtime.session import Match
        return Match([0.5] * len(texts), 0, 0.0, "stub")

    def locate(self, img, phrase):
        from edge_slim.runtime.session import Location
        return Location([0, 0, 1, 1], 0.0, 0.0, "stub")


def test_evaluate_counts_type_errors():
    from edge_slim.scenes.evaluate import evaluate
    r = evaluate(_Always3(), samples=4)
    want = sum(q["family"] != "count" for i in range(4) for q in G.sample(r["seed"], i)["questions"])
    assert r["type_errors"] == want > 0
    import edge_slim
    assert evaluate(edge_slim.load(), samples=2)["type_errors"] == 0


class _Describes:
    """A session stub whose describe returns a fixed function of the scene it is shown (by index)."""

    def __init__(self, texts):
        self.texts = iter(texts)

    def describe(self, img):
        from edge_slim.runtime.describe import Description
        return Description(next(self.texts), [], 0.0, "stub")


def test_evaluate_describe_scores_what_describe_says():
    from edge_slim.scenes import renderers as R
    scenes = [R.place("flat", 1, i) for i in range(5)]
    r = C.evaluate_describe(_Describes([C.caption(s) for s in scenes]), samples=5)
    assert (r["object_precision"], r["object_recall"], r["exact_scene"], r["relation_precision"]) == (1, 1, 1, 1)
    first = [C.join_words(C.caption_words(s)[:4]) for s in scenes]  # only the leftmost object
    r = C.evaluate_describe(_Describes(first), samples=5)
    assert r["object_precision"] == 1 and r["object_recall"] == round(5 / sum(len(s["objects"]) for s in scenes), 4)
    assert r["exact_scene"] == 0 and r["relation_precision"] is None


def test_describe_on_a_bundle_without_describe_graphs_exit_4(bundle_copy):
    import json

    from edge_slim.runtime.bundle import write_manifest
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest.pop("describe", None)  # a bundle exported from a model without the head
    write_manifest(bundle_copy, manifest)
    p = cli("describe", "-m", bundle_copy, IMG)
    assert_clean_error(p, 4)
    assert len(p.stderr.strip().splitlines()) == 1 and "describe" in p.stderr


# ---- the caption decoder (needs the [train] extra) -----------------------------------------

@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch's intra-op pool spins; on a loaded 2-core machine 2 threads run these tiny models ~100x slower."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The in-process export of the tiny bundle (three graphs) takes ~25 s on a loaded 2-core machine.
SHARES_EXPORT = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, one_torch_thread):
    """A random-init small model with a caption decoder, exported in-process (kv-cache graph), plus
    the same model's prefix graph beside it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge_slim.aot.model import export as E
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.scenes.grammar import ANSWERS, vocabulary
    torch.manual_seed(3)
    m = SlimPajama(config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS), **SMALL)).eval()
    with torch.no_grad():  # random but decisive logits, and no early eos: captions run to full length
        m.decoder.head.weight.normal_(0, 1.0)
        m.decoder.head.bias[C.EOS] = -50.0
    out = tmp_path_factory.mktemp("describe") / "bundle"
    res = E.export_bundle(m, out)
    E.describe_to_onnx(m, out.parent / "prefix.onnx", "prefix")
    return m, out, res


@SHARES_EXPORT
def test_export_writes_describe_graph_and_manifest(tiny_bundle):
    import onnx
    m, out, res = tiny_bundle
    assert res["parity_max_abs_diff"] < 1e-4 and res["describe_parity_max_abs_diff"] < 1e-4
    man = json.loads((out / "manifest.json").read_text())
    d = man["describe"]
    assert d["graph"] in man["files"] and d["decoding"] == "kv_cache" and d["vocab"] == list(C.CAPTION_VOCAB)
    assert man["outputs"][-1]["name"] == d["memory_output"] == "describe_memory"
    g = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in g.graph.output] == ["answer_logits", "match_logit", "box", "box_score", "image_embed",
                                                "text_embed", "describe_memory"]
    dg = onnx.load(str(out / d["graph"]))
    assert [i.name for i in dg.graph.input] == [i["name"] for i in d["inputs"]]


@SHARES_EXPORT
def test_describe_same_tokens_on_ort_and_numpy_and_both_decodings(tiny_bundle):
    import edge_slim
    from edge_slim.runtime.backends import backend_class
    from edge_slim.runtime.bundle import Bundle, open_bundle
    from edge_slim.runtime.describe import Describer
    _, out, _ = tiny_bundle
    got = {}
    for be in ("ort", "numpy"):
        s = edge_slim.load(out, backend=be)
        d = s.describe(IMG)
        assert d.backend == be and d.latency_ms > 0
        assert C.parse_caption(d.text).objects == d.objects  # grammar-constrained: always parses
        got[be] = d.text
    assert got["ort"] == got["numpy"] and got["ort"].count(",") == 5  # six objects: the longest caption
    # the prefix form of the same decoder (beside the bundle) gives the same greedy tokens
    b = open_bundle(out)
    m = b.manifest
    from edge_slim.aot.model.export import describe_manifest
    spec = dict(describe_manifest(tiny_bundle[0], "prefix"), graph="prefix.onnx")
    prefix = Bundle(out.parent, {**m, "describe": spec, "files": {"prefix.onnx": {}}})
    s = edge_slim.load(out, backend="ort")
    mem = s.encode(IMG).state["describe_memory"]
    kv = Describer(b, backend_class("ort")).tokens(mem)
    assert Describer(prefix, backend_class("ort")).tokens(mem) == kv and C.decode_caption(kv) == got["ort"]


@SHARES_EXPORT
def test_describe_cli_json_and_text(tiny_bundle):
    _, out, _ = tiny_bundle
    d = json.loads(cli("describe", IMG, "--model", out, "--json", check=0).stdout)
    assert set(d) == {"text", "objects", "latency_ms", "backend"} and d["backend"] == "ort"
    assert C.parse_caption(d["text"]).objects == d["objects"]
    p = cli("describe", "-", "--model", out, "--backend", "numpy", input=IMG.read_bytes(), check=0)
    assert p.stdout.decode().strip() == d["text"]


@SHARES_EXPORT
def test_describe_is_light(tiny_bundle):
    _, out, _ = tiny_bundle
    code = (f"import sys, edge_slim\nprint(edge_slim.load({str(out)!r}).describe({str(IMG)!r}).text)\n"
            "heavy = [m for m in ('torch', 'tvm', 'onnx', 'onnxscript') if m in sys.modules]\nassert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@SHARES_EXPORT
@SHARES_EXPORT
def test_a_bundle_that_lost_its_describe_graph_exit_4(tiny_bundle, tmp_path):
    """What quantize and compile make today: the manifest's describe entry without the decoder graph."""
    import shutil

    from edge_slim.runtime.bundle import write_manifest
    _, out, _ = tiny_bundle
    dst = tmp_path / "b"
    shutil.copytree(out, dst)
    (dst / "describe_decoder.onnx").unlink()
    write_manifest(dst, {k: v for k, v in json.loads((dst / "manifest.json").read_text()).items() if k != "files"})
    p = cli("describe", IMG, "--model", dst)
    assert_clean_error(p, 4)
    assert "describe_decoder.onnx" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert cli("ask", IMG, "is there a cube?", "--model", dst, check=0).stdout.strip()  # the rest still works


def test_a_tampered_describe_graph_is_refused(tiny_bundle, tmp_path):
    import shutil
    _, out, _ = tiny_bundle
    dst = tmp_path / "b"
    shutil.copytree(out, dst)
    f = dst / "describe_decoder.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    p = cli("describe", IMG, "--model", dst)
    assert_clean_error(p, 4)
    assert "checksum" in p.stderr


def test_caption_loss_falls_within_a_few_dozen_steps(one_torch_thread):
    torch = pytest.importorskip("torch")
    from edge_slim.aot.model import data as D
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.aot.model.train import AuxHead, batch_losses
    from edge_slim.scenes.grammar import ANSWERS, vocabulary
    torch.manual_seed(0)
    cfg = config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS), **SMALL)
    model, aux = SlimPajama(cfg), AuxHead(cfg.dim)
    cache = D.build_cache(64, seed=0, workers=1)
    assert cache.cap_tok.shape == (64, C.MAX_TOKENS)
    opt = torch.optim.AdamW(list(model.parameters()) + list(aux.parameters()), lr=3e-3)
    rng = np.random.default_rng(0)
    curve = []
    for _ in range(30):
        L = batch_losses(model, aux, cache, rng.integers(len(cache), size=8), rng)
        opt.zero_grad()
        sum(L.values()).backward()
        opt.step()
        curve.append(float(L["caption"].detach()))
    assert np.mean(curve[-5:]) < 0.6 * np.mean(curve[:5]), curve


def test_checkpoints_from_before_the_decoder_still_load(tmp_path):
    torch = pytest.importorskip("torch")
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.aot.model.train import load_checkpoint
    old = SlimPajama(config_for("tiny", describe_layers=0, **SMALL))
    cfg = old.cfg.to_dict()
    for k in ("describe_layers", "describe_mlp_ratio", "caption_vocab", "caption_len"):
        del cfg[k]  # as saved by an edge-slim without the caption decoder
    torch.save({"model": old.state_dict(), "config": cfg, "step": 5}, tmp_path / "old.pt")
    m = load_checkpoint(tmp_path / "old.pt")
    assert m.decoder is None and m.trained_steps == 5


def test_tiny_fits_the_size_budget():
    pytest.importorskip("torch")
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    m = SlimPajama(config_for("tiny"))
    assert m.decoder is not None
    # every parameter is stored once (model.onnx holds the memory projection, the decoder graph the rest);
    # the budget is 10 MB fp32 including graph structure (~0.3 MB today)
    assert 4 * sum(p.numel() for p in m.parameters()) <= 9.5e6


def test_scene_answers_score_the_caption_when_asked():
    from edge_slim.scenes import renderers as R
    from edge_slim.scenes.evaluate import scene_answers, summarize

    class Exact(_Describes):  # answers every task; describes with the reference caption
        def ask(self, img, qs):
            from types import SimpleNamespace
            return [SimpleNamespace(answer="yes") for _ in qs]

        def match(self, img, texts):
            from types import SimpleNamespace
            return SimpleNamespace(best=0)

        def locate(self, img, text):
            from types import SimpleNamespace
            return SimpleNamespace(box=[0, 0, 1, 1])

    scenes = [R.place("flat", 1, i) for i in range(3)]
    s = Exact([C.caption(sc) for sc in scenes])
    rows = [scene_answers(s, 1, i, "flat", describe=True) for i in range(3)]
    assert rows[0]["caption"]["text"] == C.caption(scenes[0])
    d = summarize(rows)["describe"]
    assert (d["object_precision"], d["object_recall"], d["exact_scene"], d["samples"]) == (1, 1, 1, 3)
    assert "describe" not in summarize([scene_answers(s, 1, 0, "flat")])


@SHARES_EXPORT
def test_eval_reports_describe_figures_for_a_describe_bundle(tiny_bundle):
    import json
    _, out, _ = tiny_bundle
    r = json.loads(cli("eval", "-m", out, "--samples", "2", "--json", check=0).stdout)
    assert set(r["describe"]) >= {"object_precision", "object_recall", "exact_scene", "relation_precision"}
    assert r["describe"]["samples"] == 2
    p = cli("eval", "-m", out, "--samples", "2", "--renderer", "flat,unseen", check=0)
    assert "describe obj recall" in p.stdout


@SHARES_EXPORT
def test_bench_times_describe_and_refuses_it_without_the_head(tiny_bundle, tmp_path):
    import json
    import shutil

    from edge_slim.runtime.bundle import write_manifest
    _, out, _ = tiny_bundle
    r = json.loads(cli("bench", out, "--call", "describe", "--threads", "1", "--rounds", "1", "--block", "2",
                       "--warmup", "1", "--json", check=0).stdout)
    (row,) = r["results"]
    assert row["call"] == "describe" and row["p50_ms"] > 0
    no_head = tmp_path / "no-head"
    shutil.copytree(out, no_head)
    manifest = json.loads((no_head / "manifest.json").read_text())
    del manifest["describe"]
    write_manifest(no_head, manifest)
    assert_clean_error(cli("bench", no_head, "--call", "describe", "--rounds", "1"), 3)
