"""Renderers: registry, determinism, answers on placed scenes, ray-caster boxes against its pixels,
the training mix (which refuses the evaluation renderer) and the flat renderer's unchanged pixels."""
import hashlib

import numpy as np
import pytest

from conftest import assert_clean_error, cli
from edge_slim.errors import BadInputError
from edge_slim.scenes import generate as G
from edge_slim.scenes import raycast
from edge_slim.scenes import renderers as R
from edge_slim.scenes.answer import answer, parse_desc
from edge_slim.scenes.render import render

VARIED = [n for n in R.RENDERERS if n != "flat"]


def test_registry_names_and_flags():
    assert list(R.RENDERERS) == ["flat", "varied2d", "raycast", "unseen"]
    assert [n for n, r in R.RENDERERS.items() if not r.train] == ["unseen"]
    with pytest.raises(ValueError, match="twice"):
        R._registry(R.RENDERERS["flat"], R.RENDERERS["flat"])
    with pytest.raises(BadInputError, match="unknown renderer 'nope'"):
        R.get("nope")
    assert R.parse_names(" flat, unseen ") == ["flat", "unseen"]
    for bad in ("", "flat,flat", "flat,nope"):
        with pytest.raises(BadInputError):
            R.parse_names(bad)


def test_flat_renderer_is_todays_output():
    """The shipped model was trained on these exact pixels: the default path must not change."""
    h = hashlib.sha256()
    for i in range(5):
        sc = G.sample_scene(0, i)
        assert R.place("flat", 0, i) == sc
        assert np.array_equal(np.asarray(R.draw("flat", sc)), np.asarray(render(sc, 96)))
        h.update(np.asarray(render(sc, 96)).tobytes())
        h.update(np.asarray(render(sc, 192)).tobytes())
    assert h.hexdigest() == "5640c39dcc9dad3241caa2959dd6061e91f255ee738419eccd3e51ae6a4bf5d9"


@pytest.mark.parametrize("name", VARIED)
def test_deterministic_per_seed(name):
    a, b = R.place(name, 3, 5), R.place(name, 3, 5)
    assert a == b
    ia, ib = np.asarray(R.draw(name, a)), np.asarray(R.draw(name, b))
    assert np.array_equal(ia, ib)
    assert ia.shape[2] == 3 and 160 <= max(ia.shape[:2]) <= 512
    other = R.place(name, 3, 6)
    assert other != a and not np.array_equal(np.asarray(R.draw(name, other))[:50, :50], ia[:50, :50])


@pytest.mark.parametrize("name", VARIED)
def test_answers_agree_with_parser_on_placed_scenes(name):
    off_grid, fams = 0, set()
    for i in range(120):
        s = R.sample(name, 2, i)
        scene, objs = s["scene"], s["scene"]["objects"]
        cells = [G.cell_index(o["x"], o["y"]) for o in objs]
        assert len(cells) == len(set(cells))  # per-cell training targets stay defined
        off_grid += any(max(abs(o["x"] % 16 - 8), abs(o["y"] % 16 - 8)) > 5 for o in objs)
        for q in s["questions"]:
            assert answer(scene, q["text"]) == q["answer"], (q, scene)
            fams.add(q["family"])
        if s["refer"] is not None:  # the locate box is the one named object's box, drawn by this renderer
            d = parse_desc(s["refer"]["text"][len("the "):])
            named = [o for o in objs if all(o[k] == v for k, v in d.items())]
            assert len(named) == 1 and named[0]["box"] == s["refer"]["box"]
        for o in objs:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < o["x"] < x1 <= 96 and 0 <= y0 < o["y"] < y1 <= 96
    assert off_grid > 60  # objects really are anywhere, not on the jittered grid
    assert len(fams) == 6


def test_raycast_boxes_hold_the_objects_pixels():
    """Boxes come from the 3-D geometry: every pixel showing an object lies inside its box, an
    object nothing overlaps fills its box to the edges, and no object vanishes."""
    checked = 0
    for i in range(8):
        sc = R.place("raycast", 4, i)
        ids = raycast.id_buffer(sc)
        W, H = sc["canvas"]
        ys, xs = np.mgrid[0:H, 0:W]
        cx, cy = (xs + 0.5) * 96 / W, (ys + 0.5) * 96 / H  # pixel centres in canvas pixels
        for k, o in enumerate(sc["objects"]):
            m = ids == k
            assert m.sum() >= 30, (i, k, o)
            x0, y0, x1, y1 = o["box"]
            tol = 0.6 * 96 / min(W, H)
            assert cx[m].min() >= x0 - tol and cx[m].max() <= x1 + tol
            assert cy[m].min() >= y0 - tol and cy[m].max() <= y1 + tol
            alone = not any(min(x1, p["box"][2]) > max(x0, p["box"][0]) and min(y1, p["box"][3]) > max(y0, p["box"][1])
                            for j, p in enumerate(sc["objects"]) if j != k)
            if alone:
                edge = 2.5 * 96 / min(W, H)
                assert cx[m].min() <= x0 + edge and cx[m].max() >= x1 - edge, (i, k)
                assert cy[m].min() <= y0 + edge and cy[m].max() >= y1 - edge, (i, k)
                checked += 1
    assert checked >= 10


def test_raycast_sizes_are_the_grammars():
    for i in range(30):
        for o in R.place("raycast", 5, i)["objects"]:
            x0, y0, x1, y1 = o["box"]
            half = max(x1 - x0, y1 - y0) / 2
            assert abs(half - o["r"]) < 0.13 * o["r"] + 0.05 or min(x0, y0) == 0 or max(x1, y1) == 96, o


def test_training_mix_refuses_the_evaluation_renderer():
    assert R.parse_mix("flat:1,varied2d:2,raycast") == {"flat": 0.25, "varied2d": 0.5, "raycast": 0.25}
    for bad in ("flat:1,unseen:1", {"unseen": 1.0}, "flat:x", "flat:0", "", "nope:1"):
        with pytest.raises(BadInputError):
            R.parse_mix(bad)
    from edge_slim.aot.model import data as D
    with pytest.raises(BadInputError, match="evaluation only"):
        D.build_cache(4, renderers={"unseen": 1.0}, workers=1)
    assert D.mix_tag(None) == D.mix_tag("flat") == ""
    assert D.mix_tag("flat:1,raycast:1") == "-flat0.50-raycast0.50"


def test_cache_builder_mixes_renderers():
    from edge_slim.aot.model import data as D
    mix = R.parse_mix("flat:0.2,varied2d:0.4,raycast:0.4")
    picks = [D.pick_renderer(0, i, mix) for i in range(300)]
    assert {p: picks.count(p) for p in mix} == pytest.approx({"flat": 60, "varied2d": 120, "raycast": 120}, abs=25)
    cache = D.build_cache(6, seed=0, workers=1, renderers=mix)
    assert cache.images.shape == (6, 96, 96, 3)
    for i in range(6):
        sc = R.place(picks[i], 0, i)
        for o in sc["objects"]:
            c = D.cell_of(o)
            assert cache.cells[i, c, 0] > 0
            assert np.allclose(cache.cell_box[i, c], np.array(o["box"]) / 96, atol=1e-6)
    flat = D.build_cache(4, seed=0, workers=1)  # the default is today's recipe, pixel for pixel
    for i in range(4):
        hi = np.random.default_rng([0, i, 7]).random() < 0.3
        img = render(G.sample_scene(0, i), 192 if hi else 96)
        assert np.array_equal(flat.images[i], np.asarray(img.resize((96, 96), resample=2) if hi else img))


def test_train_cli_refuses_bad_mix_before_torch():
    assert_clean_error(cli("train", "--renderers", "flat:1,unseen:1", "--steps", 1), 3)
