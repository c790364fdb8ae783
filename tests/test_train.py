"""Training and export (need the [train] extra): loss falls, resume works, export parity."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_slim.aot.model.export import export_bundle  # noqa: E402
from edge_slim.aot.model.slimpajama import SlimPajama, config_for  # noqa: E402
from edge_slim.aot.model.train import TrainArgs, train  # noqa: E402
from edge_slim.scenes.grammar import ANSWERS, vocabulary  # noqa: E402

SMALL = {"dim": 48, "heads": 2, "stem": (8, 16, 32), "image_layers": 1, "text_layers": 1, "cross_layers": 1,
         "fusion_layers": 1, "embed_dim": 16}


def _args(tmp_path, steps, **kw):
    return TrainArgs(steps=steps, batch=16, lr=3e-3, warmup=5, scenes=300, out=str(tmp_path / "run"),
                     cache_dir=str(tmp_path / "cache"), ckpt_every=10, eval_every=0, overrides=SMALL, **kw)


def test_training_checkpoints_and_resumes(tmp_path):
    msgs = []
    train(_args(tmp_path, 20), log=msgs.append)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 20
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    train(_args(tmp_path, 30), log=msgs.append)  # same run directory: continues at step 20
    st = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert st["step"] == 30 and any("resumed" in m and "step 20" in m for m in msgs)
    assert any(not torch.equal(first[k], st["model"][k]) for k in first)


def test_loss_falls_within_a_few_dozen_steps(tmp_path):
    from edge_slim.aot.model import data as D
    from edge_slim.aot.model.train import AuxHead, batch_losses
    torch.manual_seed(0)
    cfg = config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS), **SMALL)
    model, aux = SlimPajama(cfg), AuxHead(cfg.dim)
    cache = D.build_cache(200, seed=0, workers=1)
    opt = torch.optim.AdamW(list(model.parameters()) + list(aux.parameters()), lr=3e-3)
    rng = np.random.default_rng(0)
    curve = []
    for _ in range(40):
        L = batch_losses(model, aux, cache, rng.integers(len(cache), size=16), rng)
        loss = sum(L.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    assert np.mean(curve[-8:]) < 0.8 * np.mean(curve[:8]), curve


def test_export_parity_and_contract(tmp_path):
    torch.manual_seed(1)
    m = SlimPajama(config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS))).eval()
    for mod in m.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    res = export_bundle(m, tmp_path / "b")
    assert res["parity_max_abs_diff"] < 1e-4
    import onnx
    g = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert g.opset_import[0].version >= 20
    ops = [n.op_type for n in g.graph.node]
    assert "Erf" not in ops and ops.count("Gelu") >= 4  # one node per GELU (the 5-node erf chain is ~17 % slower)
    assert [i.name for i in g.graph.input] == ["image", "tokens"]
    assert [o.name for o in g.graph.output] == ["answer_logits", "match_logit", "box", "box_score", "image_embed", "text_embed",
                                                "describe_memory"]  # the caption decoder's memory (test_describe.py)
    for i in g.graph.input:  # static shapes
        assert all(d.dim_value > 0 for d in i.type.tensor_type.shape.dim)
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["config"]["dim"] == 128 and man["source_model_sha256"]


def test_question_cells_are_the_generators_targets():
    """The pointer's training targets, read back from cached tokens, name the generator's object."""
    from edge_slim.aot.model import data as D
    from edge_slim.aot.model.train import question_targets
    from edge_slim.scenes import generate as G
    make_tok = lambda: D.make_tokenizer(16)
    cache = D.build_cache(60, seed=0, workers=1)
    qt = question_targets(cache)
    qc = qt["p1"]
    checked = 0
    for i in range(60):
        scene = G.sample_scene(0, i)
        rng = np.random.default_rng([0, i, 7])
        rng.random()  # the render-size draw in data._scene_arrays
        fams = list(D.FAMILY_WEIGHTS)
        w = np.array([D.FAMILY_WEIGHTS[f] for f in fams])
        qs = []
        while len(qs) < D.NQ:
            q = G.question(scene, fams[rng.choice(len(fams), p=w / w.sum())], rng)
            if q is not None:
                qs.append(q)
        for j, q in enumerate(qs):
            if "target" in q:
                assert qc[i, j] == D.cell_of(scene["objects"][q["target"]])
                checked += 1
            elif q["family"] == "spatial":
                assert qc[i, j] >= 0 and qt["p2"][i, j] >= 0 and qc[i, j] != qt["p2"][i, j]
                assert qt["has2"][i, j] and qt["rel"][i, j] == ["left of", "right of", "above", "below"].index(
                    next(r for r in ("left of", "right of", "above", "below") if r in q["text"]))
            elif q["family"] == "count":
                assert qt["sel1"][i, j].sum() == int(q["answer"]) and not qt["has2"][i, j]
            elif q["family"] == "exists":
                assert bool(qt["sel1"][i, j].any()) == (q["answer"] == "yes")
    assert checked > 100
    # captions: a true caption's descriptions each fit some object; the relation is read right
    from edge_slim.aot.model.train import text_targets
    ct = text_targets(cache.c_true, cache.cells)
    assert ct["sel1"].any(-1).all()
    assert (ct["sel2"].any(-1) | ~ct["has2"]).all()
    toks = make_tok().vocab
    for i in range(20):
        for j in range(3):
            words = [toks[t] for t in cache.c_true[i, j] if t]
            want = next((k for k, w in enumerate(("left", "right", "above", "below")) if w in words), -1)
            assert ct["rel"][i, j] == want and ct["has2"][i, j] == ("and" in words or want >= 0)
