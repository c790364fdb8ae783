"""`edge-slim slim` (edge_slim/aot/slim/): structured pruning, distillation, the selection rule, and one tiny
end-to-end run through the real CLI."""
import json

import numpy as np
import pytest

from conftest import assert_clean_error, cli, shipped_dir
from edge_slim.aot.slim import select as S

# -- the selection rule (pure Python: runs without torch) ---------------------------------------------
TABLE = [  # hand-made: sizes in MB, errors as fractions, p50 latency in ms
    {"name": "teacher", "size_mb": 8.0, "error": 0.010, "latency_ms": 10.0},
    {"name": "teacher-int8", "size_mb": 2.0, "error": 0.012, "latency_ms": 6.0},
    {"name": "pruned", "size_mb": 4.0, "error": 0.030, "latency_ms": 5.0},
    {"name": "pruned-int8", "size_mb": 1.0, "error": 0.035, "latency_ms": 4.0},
    {"name": "dominated", "size_mb": 5.0, "error": 0.040, "latency_ms": 7.0},   # worse than pruned everywhere
    {"name": "tiny", "size_mb": 0.5, "error": 0.200, "latency_ms": 3.0},
]


def test_pareto_frontier_drops_only_dominated_rows():
    assert S.pareto(TABLE) == [0, 1, 2, 3, 5]
    assert S.pareto(TABLE, ("size_mb", "error")) == [0, 1, 3, 5]         # pruned loses to teacher-int8 in 2-D


def test_complexity_is_the_weighted_sum_of_min_max_normalized_figures():
    c = S.complexity(TABLE, S.Objective(alpha=1.0, beta=2.0))
    size = (2.0 - 0.5) / 7.5
    err = (0.012 - 0.010) / 0.190
    assert c[1] == pytest.approx(size + 2 * err)
    assert c[5] == pytest.approx(0.0 + 2 * 1.0)
    lat = S.complexity(TABLE, S.Objective(alpha=0.0, beta=0.0, gamma=1.0))
    assert lat[5] == 0.0 and lat[0] == 1.0


def test_choose_follows_the_weights_and_the_constraints():
    # (size_norm, error_norm): teacher (1, 0), teacher-int8 (0.2, 0.0105), pruned-int8 (0.067, 0.132), tiny (0, 1)
    assert TABLE[S.choose(TABLE, S.Objective(alpha=1.0, beta=1.0))]["name"] == "pruned-int8"
    assert TABLE[S.choose(TABLE, S.Objective(alpha=1.0, beta=0.01))]["name"] == "tiny"
    assert TABLE[S.choose(TABLE, S.Objective(alpha=0.1, beta=1.0))]["name"] == "teacher-int8"
    assert TABLE[S.choose(TABLE, S.Objective(alpha=0.01, beta=1.0))]["name"] == "teacher"
    assert TABLE[S.choose(TABLE, S.Objective(alpha=0.0, beta=1.0))]["name"] == "teacher"
    # a constraint alone: the most accurate candidate that meets it
    assert TABLE[S.choose(TABLE, S.Objective(max_size_mb=1.5))]["name"] == "pruned-int8"
    assert TABLE[S.choose(TABLE, S.Objective(max_latency_ms=5.0))]["name"] == "pruned"
    # a constraint and weights: the lowest complexity among the feasible
    assert TABLE[S.choose(TABLE, S.Objective(alpha=1.0, beta=0.01, max_latency_ms=5.0,
                                             weights_given=True))]["name"] == "tiny"


def test_no_feasible_candidate_is_an_error_with_its_own_exit_code():
    with pytest.raises(S.NoFeasibleCandidate, match="0.1 MB") as e:
        S.choose(TABLE, S.Objective(max_size_mb=0.1))
    assert e.value.exit_code == 5
    with pytest.raises(ValueError, match="latency"):
        S.complexity([{"size_mb": 1.0, "error": 0.1}], S.Objective(gamma=1.0))
    with pytest.raises(ValueError):
        S.Objective(alpha=0.0, beta=0.0, gamma=0.0)


def test_frontier_plot_draws_the_hand_made_table(tmp_path):
    from PIL import Image

    from edge_slim.aot.slim.plot import plot_frontier
    front = S.pareto(TABLE)
    rows = [{**r, "precision": "int8" if "int8" in r["name"] else "fp32", "pareto": i in front, "chosen": i == 3}
            for i, r in enumerate(TABLE)]
    for axis in ("size", "latency"):
        png = plot_frontier(rows, tmp_path / f"{axis}.png", axis)
        img = Image.open(png)
        assert img.size == (720, 480)
        px = np.asarray(img.convert("RGB"))
        assert ((px == (200, 60, 40)).all(-1)).sum() > 50      # frontier points and line drawn
        assert ((px == (120, 120, 120)).all(-1)).sum() > 10    # the dominated candidate
    with pytest.raises(ValueError):
        plot_frontier([{**r, "latency_ms": None} for r in rows], tmp_path / "x.png", "latency")


# -- pruning and distillation (torch) -----------------------------------------------------------------
SMALL = {"dim": 64, "heads": 4, "mlp_ratio": 2, "stem": (16, 32, 48), "image_layers": 2, "text_layers": 1,
         "cross_layers": 1, "fusion_layers": 1, "embed_dim": 16, "describe_layers": 1}


@pytest.fixture(scope="module")
def torch():
    t = pytest.importorskip("torch")
    t.set_num_threads(1)
    return t


def _small_model(torch, seed=0):
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.scenes import caption as CAP
    from edge_slim.scenes.grammar import ANSWERS, vocabulary
    torch.manual_seed(seed)
    m = SlimPajama(config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS),
                              caption_vocab=len(CAP.CAPTION_VOCAB), caption_len=CAP.MAX_TOKENS, **SMALL))
    with torch.no_grad():
        for mod in m.modules():   # non-trivial BatchNorm statistics and weights everywhere, as after training
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
        for name in ("obj_proj", "rel_proj", "count_proj", "count2_proj", "pair_proj"):
            torch.nn.init.normal_(getattr(m, name).weight, std=0.02)
        m.answer_head[2].weight.mul_(30.0)   # a confident, input-dependent answer distribution
    return m.eval()


@pytest.fixture(scope="module")
def cache():
    from edge_slim.aot.model import data as D
    return D.build_cache(48, seed=0, workers=1)


@pytest.fixture(scope="module")
def importance(torch, cache):
    from edge_slim.aot.slim.batches import loss_batches
    from edge_slim.aot.slim.prune import measure_importance
    return measure_importance(_small_model(torch), loss_batches(cache, n=2, batch=8))


def _outputs(torch, m, seed=0):
    from edge_slim.aot.model.export import example_inputs
    image, tokens = example_inputs(m, seed)
    with torch.no_grad():
        return [t.numpy() for t in m.eval()(image, tokens)]


def test_pruned_model_is_dense_smaller_and_runs_through_export(torch, importance, tmp_path):
    import onnx
    from onnx import numpy_helper

    import edge_slim
    from edge_slim.aot.model.export import export_bundle
    from edge_slim.aot.slim.prune import Ratios, parameter_count, prune
    teacher = _small_model(torch)
    st = prune(teacher, importance, Ratios(heads=0.5, mlp=0.5, stem=0.5, layers=1), name="small-slim")
    cfg = st.cfg
    assert cfg.image_layers == 1 and cfg.text_layers == 1 and cfg.stem == (8, 16, 24)
    assert cfg.layer_heads == {"img_blocks": [2], "txt_blocks": [2], "cross_blocks": [2], "fusion_blocks": [2]}
    assert cfg.layer_mlp == {s: [64] for s in ("img_blocks", "txt_blocks", "cross_blocks", "fusion_blocks", "decoder")}
    a = st.img_blocks[0].attn
    assert tuple(a.q.weight.shape) == (32, 64) and tuple(a.o.weight.shape) == (64, 32)
    assert tuple(st.decoder.blocks[0].mlp.fc1.weight.shape) == (64, 64)
    assert parameter_count(st) < 0.7 * parameter_count(teacher)
    for name, p in st.named_parameters():   # dense: nothing masked, no all-zero row or column left behind
        if p.ndim >= 2 and ("blocks" in name or name.startswith("stem")):
            flat = p.detach().flatten(2).abs().sum(-1) if p.ndim == 4 else p.detach().abs()
            assert (flat.sum(1) > 0).all() and (flat.sum(0) > 0).all(), name
    res = export_bundle(st, tmp_path / "b")
    assert res["parity_max_abs_diff"] < 1e-3
    shapes = sorted(tuple(numpy_helper.to_array(i).shape) for i in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.initializer)
    assert (64, 32) in shapes and (32, 64) in shapes      # q/k/v and o of 2 kept heads (transposed or not)
    assert not any(s[:2] == (16, 3) for s in shapes)      # the first conv now has 8 output channels
    with edge_slim.load(tmp_path / "b", backend="ort") as s:
        assert s.ask(np.zeros((96, 96, 3), np.uint8), "how many cubes are there?").answer
        assert s.describe(np.zeros((96, 96, 3), np.uint8)).text is not None


def test_coupled_slices_are_removed_together(torch, importance):
    """Zero the outputs of some heads, FFN units, stem channels and one whole block; a plan that removes exactly
    those groups must leave the function unchanged (each group's slices were cut from every tensor together)."""
    from edge_slim.aot.slim.prune import Plan, apply_plan, plan, Ratios
    m = _small_model(torch)
    dh = 16
    with torch.no_grad():
        a = m.img_blocks[0].attn
        a.o.weight[:, 1 * dh:2 * dh] = 0           # head 1 contributes nothing
        a.o.weight[:, 3 * dh:4 * dh] = 0           # head 3 neither
        m.txt_blocks[0].mlp.fc2.weight[:, 5:70] = 0  # FFN units 5..69 of the text layer
        m.stem[3].weight[:, 2:10] = 0              # stem channels 2..9 of conv 0 feed nothing onward
        dead = m.img_blocks[1]                     # a whole block whose residual branches add zero
        for lin in (dead.attn.o, dead.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    full = plan(m, importance, Ratios())
    p = Plan(layers={**full.layers, "img_blocks": [0]},
             heads={**{k: v for k, v in full.heads.items() if k != ("img_blocks", 1)},
                    ("img_blocks", 0): np.array([0, 2])},
             mlp={**{k: v for k, v in full.mlp.items() if k != ("img_blocks", 1)},
                  ("txt_blocks", 0): np.r_[0:5, 70:128]},
             stem=[np.r_[0:2, 10:16], full.stem[1], full.stem[2]])
    st = apply_plan(m, p)
    assert st.cfg.stem == (8, 32, 48) and st.cfg.image_layers == 1
    for a_, b_ in zip(_outputs(torch, m), _outputs(torch, st)):
        assert np.abs(a_ - b_).max() < 1e-4
    # the kept slices are the teacher's own, at the kept indices
    assert torch.equal(st.img_blocks[0].attn.q.weight, m.img_blocks[0].attn.q.weight[np.r_[0:16, 32:48]])
    assert torch.equal(st.stem[1].running_mean, m.stem[1].running_mean[np.r_[0:2, 10:16]])
    assert torch.equal(st.stem[3].weight, m.stem[3].weight[:, np.r_[0:2, 10:16]])
    # an empty plan is the identity, config included (per-layer widths left out)
    same = apply_plan(m, full)
    assert same.cfg == m.cfg and same.cfg.layer_heads is None
    for a_, b_ in zip(_outputs(torch, m), _outputs(torch, same)):
        assert np.abs(a_ - b_).max() == 0


def test_taylor_importance_scores_a_dead_head_zero_and_ablation_finds_the_dead_layer(torch, cache):
    from edge_slim.aot.slim.batches import loss_batches
    from edge_slim.aot.slim.prune import measure_importance
    m = _small_model(torch)
    with torch.no_grad():
        m.img_blocks[0].attn.o.weight[:, 16:32] = 0
        for lin in (m.img_blocks[1].attn.o, m.img_blocks[1].mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    imp = measure_importance(m, loss_batches(cache, n=2, batch=8))
    h = imp.heads[("img_blocks", 0)]
    assert h[1] == 0 and (np.delete(h, 1) > 0).all()
    # skipping the dead block changes nothing; skipping any other changes the loss (up, or down in a random model)
    assert abs(imp.layers[("img_blocks", 1)]) < 1e-5 < min(abs(v) for k, v in imp.layers.items() if k != ("img_blocks", 1))


def test_distillation_lowers_student_teacher_divergence_within_a_few_steps(torch, cache):
    """The shipped teacher (a trained model: a random one has nearly flat answers to distill) and a student
    pruned from it; 8 steps of distillation bring the student's answers back towards the teacher's."""
    from edge_slim.aot.model.from_bundle import model_from_bundle
    from edge_slim.aot.slim.batches import loss_batches
    from edge_slim.aot.slim.distill import DistillArgs, distill, divergence
    from edge_slim.aot.slim.prune import Ratios, measure_importance, prune
    teacher = model_from_bundle(shipped_dir())
    imp = measure_importance(teacher, loss_batches(cache, n=2, batch=8), method="magnitude")
    student = prune(teacher, imp, Ratios(heads=0.5, mlp=0.5, stem=0.5, layers=1))
    before = divergence(student, teacher, cache, n=2, batch=8)
    w = teacher.answer_head[2].weight.clone()
    distill(student, teacher, cache, DistillArgs(steps=8, batch=8, lr=1e-3, warmup=1))
    after = divergence(student, teacher, cache, n=2, batch=8)
    assert after["kd_answer"] < 0.7 * before["kd_answer"], (before, after)
    assert sum(after.values()) < sum(before.values())
    assert torch.equal(teacher.answer_head[2].weight, w)          # the teacher is not trained


def test_caption_decoders_are_distilled_when_both_models_have_one(torch, importance, cache):
    from edge_slim.aot.slim.distill import divergence
    from edge_slim.aot.slim.prune import Ratios, prune
    teacher = _small_model(torch)
    d = divergence(prune(teacher, importance, Ratios(mlp=0.5)), teacher, cache, n=1, batch=4)
    assert np.isfinite(d["kd_caption"]) and d["kd_caption"] > 0
    assert divergence(teacher, teacher, cache, n=1, batch=4)["kd_caption"] < 1e-6


def test_ratios_parse_and_refuse_bad_specs():
    pytest.importorskip("torch")
    from edge_slim.aot.slim.prune import Ratios
    assert Ratios.parse("h=0.25,mlp=0.5,layers=1") == Ratios(heads=0.25, mlp=0.5, layers=1)
    assert Ratios.parse("heads=0.5,stem=0.25").tag == "h50-s25"
    for bad in ("heads=1.0", "width=0.5", "heads", "layers=x"):
        with pytest.raises(ValueError):
            Ratios.parse(bad)


# -- the command ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_teacher(torch, tmp_path_factory):
    from edge_slim.aot.model.export import export_bundle
    d = tmp_path_factory.mktemp("teacher") / "small"
    export_bundle(_small_model(torch), d)
    return d


@pytest.mark.slow
def test_slim_end_to_end_writes_a_bundle_that_loads_and_answers(small_teacher, tmp_path):
    import edge_slim
    out, png = tmp_path / "chosen", tmp_path / "frontier.png"
    p = cli("slim", small_teacher, "--target", "x86-64", "-o", out, "--ratios", "heads=0.5,mlp=0.5,stem=0.5",
            "--precisions", "fp32", "--steps", "3", "--batch", "4", "--scenes", "20", "--cache-dir", tmp_path / "c",
            "--eval-samples", "2", "--bench-rounds", "1", "--threads", "1", "--alpha", "1", "--beta", "0.001",
            "--plot", png, "--keep-candidates", tmp_path / "all", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert [c["tag"] for c in r["candidates"]] == ["teacher", "h50-m50-s50"]
    assert all(c["latency_ms"] > 0 and c["size_mb"] > 0 for c in r["candidates"])
    assert all("describe" in c["scores"]["unseen"] for c in r["candidates"])   # the caption head is measured too
    assert r["candidates"][1]["size_mb"] < r["candidates"][0]["size_mb"]
    assert r["candidates"][1]["chosen"]              # size weighs 1000x error here: the smaller one
    m = json.loads((out / "manifest.json").read_text())
    lin = m["slim"]
    assert lin["teacher"]["model_sha256"] == json.loads((small_teacher / "manifest.json").read_text())["files"]["model.onnx"]["sha256"]
    assert lin["ratios"] == {"heads": 0.5, "mlp": 0.5, "stem": 0.5, "layers": 0}
    assert lin["distill"]["steps"] == 3 and lin["target"] == "x86-64" and len(lin["frontier"]) == 2
    assert m["config"]["layer_heads"]["img_blocks"] == [2, 2]
    with edge_slim.load(out) as s:
        assert s.ask(np.zeros((96, 96, 3), np.uint8), "what color is the cube?").answer
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "MODEL_CARD.md").read_text()      # written from the lineage, checksummed with the rest
    assert "heads 50%" in card and "| unseen |" in card and "MODEL_CARD.md" in m["files"]
    kept = tmp_path / "all"                          # every candidate, not only the chosen one
    assert json.loads((kept / "report.json").read_text())["chosen"] == 1
    assert json.loads((kept / "h50-m50-s50" / "fp32" / "manifest.json").read_text())["slim"]["tag"] == "h50-m50-s50"
    with edge_slim.load(kept / "h50-m50-s50" / "fp32") as s:
        assert s.ask(np.zeros((96, 96, 3), np.uint8), "how many cubes are there?").answer


def test_slim_has_help_and_is_listed():
    assert "slim" in cli("--help", check=0).stdout
    p = cli("slim", "--help", check=0)
    assert "--max-size-mb" in p.stdout and "--ratios" in p.stdout


def test_slim_refuses_bad_input_with_one_line(tmp_path):
    pytest.importorskip("torch")
    p = cli("slim", "--target", "x86-64", "-o", tmp_path / "o", "--ratios", "heads=1.5")
    assert_clean_error(p, 2)
    p = cli("slim", shipped_dir().parent / "slimpajama-tiny-int8", "--target", "x86-64", "-o", tmp_path / "o")
    assert_clean_error(p, 4)
    assert "fp32" in p.stderr
    p = cli("slim", "--target", "no-such-board", "-o", tmp_path / "o")
    assert p.returncode in (3, 4) and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def _graph_parameters(bundle) -> int:
    from edge_slim.runtime.onnx_proto import load_model
    return sum(int(np.prod(a.shape)) for f in bundle.manifest["files"] if f.endswith(".onnx")
               for a in load_model(bundle.path / f).graph.initializers.values())


def test_shipped_nano_is_a_dense_pruned_student_of_the_shipped_tiny():
    from edge_slim.runtime.bundle import open_bundle
    tiny, nano = open_bundle("slimpajama-tiny"), open_bundle("slimpajama-nano")
    lin = nano.manifest["slim"]
    assert lin["teacher"]["model_sha256"] == tiny.manifest["files"]["model.onnx"]["sha256"]
    assert nano.manifest["config"]["layer_heads"] and nano.manifest["config"]["stem"] != tiny.manifest["config"]["stem"]
    assert _graph_parameters(nano) <= 0.35 * _graph_parameters(tiny)        # issue 18's bound, from the graphs
    int8 = open_bundle("slimpajama-nano-int8")
    assert int8.manifest["slim"]["precision"] == "int8" and int8.manifest["quantization"]
    assert "MODEL_CARD.md" in nano.manifest["files"] and "MODEL_CARD.md" in int8.manifest["files"]


def test_nano_runs_by_name_through_the_cli():
    from conftest import EXAMPLES
    img = EXAMPLES / "images" / "scene0.png"
    p = cli("ask", "--model", "slimpajama-nano-int8", img, "how many cubes are there?", "--json", check=0)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["answer"] in list("0123456")     # a number to a count question
    p = cli("describe", "--model", "slimpajama-nano", img, "--json", check=0)
    assert p.returncode == 0 and json.loads(p.stdout)["objects"], p.stderr
