"""Variant sets (targets/x86-64-multi.toml): one artifact with the builds of several x86 targets, of which the runtime
loads the best this CPU runs (docs/targets.md). The rule is tested on hand-made flag sets; the real compile through
the CLI on the shipped Nano, each variant forced in turn against ONNX Runtime as the oracle."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_slim
from edge_slim import targets as T
from edge_slim.errors import BadInputError, ModelError
from edge_slim.runtime import bundle as B
from edge_slim.scenes import generate as G
from edge_slim.scenes.render import render

SET = [{"dir": "vnni", "target": "x86-64-vnni", "cpu_flags": ["avx512f", "avx512_vnni"]},
       {"dir": "avx512", "target": "x86-64-avx512", "cpu_flags": ["avx512f"]},
       {"dir": "base", "target": "x86-64", "cpu_flags": ["avx2", "fma"]}]
V4 = {"avx2", "fma", "avx512f"}


@pytest.mark.parametrize("flags, want", [(V4 | {"avx512_vnni"}, "x86-64-vnni"), (V4, "x86-64-avx512"),
                                         ({"avx2", "fma", "avx512_vnni"}, "x86-64"),
                                         ({"sse2"}, "x86-64"),       # none fits: the baseline, whose check refuses
                                         (set(), "x86-64")])         # flags unknown: the baseline
def test_the_first_variant_the_cpu_runs_is_picked(flags, want):
    assert B.pick_variant(SET, flags)["target"] == want


def test_a_named_variant_overrides_the_rule():
    assert B.pick_variant(SET, V4 | {"avx512_vnni"}, "x86-64")["target"] == "x86-64"
    with pytest.raises(ModelError, match="EDGE_SLIM_VARIANT=rpi5 names no variant.*x86-64-vnni, x86-64-avx512"):
        B.pick_variant(SET, V4, "rpi5")


def test_the_multi_target_is_its_baseline_with_variants():
    t, base = T.get_target("x86-64-multi"), T.get_target("x86-64")
    assert (t.tvm, t.cpu_flags, t.host_triple, t.recipe) == (base.tvm, base.cpu_flags, base.host_triple, base.recipe)
    assert t.variant_names("fp32") == ["x86-64-avx512", "x86-64"]
    assert t.variant_names("int8") == ["x86-64-vnni", "x86-64-avx512", "x86-64"]
    with pytest.raises(BadInputError, match="no variants for fp16"):
        t.variant_names("fp16")
    assert T.get_target("x86-64-dispatch").name == "x86-64-multi"


@pytest.mark.parametrize("variants, msg", [
    ('fp32 = ["x86-64-avx512", "no-such-target"]', "variant 'no-such-target' is not a target profile"),
    ('fp32 = ["x86-64-multi", "x86-64"]', "cannot nest"),
    ('fp32 = ["x86-64-avx512", "x86-64"]\nint8 = ["x86-64-vnni"]', "must end with the same baseline"),
    ('fp64 = ["x86-64"]', "unknown: fp64"),
    ('fp32 = []', "non-empty lists"),
    ('fp32 = ["rpi5", "x86-64"]', "one host triple"),
])
def test_bad_variant_sets_are_refused_when_loaded(tmp_path, variants, msg):
    d = tmp_path / "targets"
    shutil.copytree(T.data_dir("targets"), d)
    (d / "bad-set.toml").write_text(f'name = "bad-set"\ndescription = "x"\n[variants]\n{variants}\n')
    with pytest.raises(ModelError, match=msg):
        T.load_targets(d)


@pytest.fixture(scope="module")
def scenes():
    return [(render(s["scene"], 96), s["questions"][0]["text"]) for s in (G.sample(20261207, i) for i in range(6))]


@pytest.fixture(scope="module")
def nano_multi(tmp_path_factory) -> tuple[Path, dict]:
    """The shipped Nano compiled for x86-64-multi through the CLI (no split parts: 2 builds, ~20 s)."""
    pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
    out = tmp_path_factory.mktemp("variants") / "nano-multi"
    r = subprocess.run([sys.executable, "-m", "edge_slim", "compile", "slimpajama-nano", "-t", "x86-64-multi",
                        "--no-split", "-o", str(out), "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout)


@pytest.mark.slow
def test_compile_multi_through_the_cli_and_run_every_variant(nano_multi, scenes, monkeypatch):
    out, report = nano_multi
    assert [v["target"] for v in report["variants"]] == ["x86-64-avx512", "x86-64"]
    assert report["bytes"] == sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    top = json.loads((out / B.MANIFEST).read_text())
    assert top["format"] == "variants" and top["target"]["name"] == "x86-64-multi"
    for v in top["variants"]:
        sub = json.loads((out / v["dir"] / B.MANIFEST).read_text())
        assert sub["format"] == "tvm" and sub["target"]["name"] == v["target"]
        assert sub["target"]["cpu_flags"] == v["cpu_flags"] == list(T.get_target(v["target"]).cpu_flags)

    ref = edge_slim.load("slimpajama-nano", backend="ort", threads=1)
    want = [ref.ask(img, q) for img, q in scenes]
    expect = B.pick_variant(top["variants"], T.cpu_flags())["target"]
    s = edge_slim.load(out, threads=1)
    assert s.bundle.manifest["target"]["name"] == expect and s.backend.name == "tvm"
    assert s.bundle.manifest["variant_of"]["variants"] == ["x86-64-avx512", "x86-64"]
    for v in top["variants"]:
        monkeypatch.setenv(B.VARIANT_ENV, v["target"])
        if not set(v["cpu_flags"]) <= T.cpu_flags():
            with pytest.raises(ModelError, match="needs CPU features"):
                edge_slim.load(out)
            continue
        s = edge_slim.load(out, threads=1)
        assert s.bundle.manifest["target"]["name"] == v["target"]
        for (img, q), w in zip(scenes, want):
            got = s.ask(img, q)
            assert got.answer == w.answer and abs(got.score - w.score) < 1e-4, (v["target"], q, got, w)


@pytest.mark.slow
def test_a_tampered_or_unrunnable_variant_is_refused(tmp_path, monkeypatch, scenes):
    pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
    from compile_helpers import assemble_variant_set, compiled
    base = compiled("x86-64")
    art = assemble_variant_set(tmp_path / "set", [("x86-64-future", base, ["no_such_cpu_feature"]), ("x86-64", base, ["avx2"])])
    s = edge_slim.load(art, threads=1)                       # the first variant needs a flag no CPU has: skipped
    assert s.bundle.manifest["target"]["name"] == "x86-64"
    assert s.ask(*scenes[0]).answer == edge_slim.load(base, threads=1).ask(*scenes[0]).answer
    monkeypatch.setenv(B.VARIANT_ENV, "x86-64-future")
    r = subprocess.run([sys.executable, "-m", "edge_slim", "ask", "examples/images/scene0.png", "how many?",
                        "-m", str(art)], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 4 and "needs CPU features no_such_cpu_feature" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    monkeypatch.delenv(B.VARIANT_ENV)
    m = json.loads((art / "x86-64" / B.MANIFEST).read_text())
    m["target"]["cpu_flags"] = []
    (art / "x86-64" / B.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ModelError, match="checksum mismatch for x86-64/manifest.json"):
        edge_slim.load(art)
    (art / B.MANIFEST).write_text(json.dumps({"schema": 1, "format": "variants", "variants": [{"dir": "../x",
                                                                                              "target": "x"}]}))
    with pytest.raises(ModelError, match="a variant set needs"):
        edge_slim.load(art)
    assert np.isfinite(s.ask(*scenes[1]).score)


QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
PICK = """
import sys, edge_slim
s = edge_slim.load(sys.argv[1], threads=1)
a = s.ask(sys.argv[2], sys.argv[3])
print(s.bundle.manifest["target"]["name"], a.answer, a.score)
"""


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64-static is missing: scripts/dev-setup.sh installs it")
def test_an_avx2_only_cpu_loads_the_avx2_build(nano_multi, tmp_path):
    """Under qemu's Haswell CPU model (AVX2, no AVX-512) the set loads its x86-64 build and answers as ORT does;
    were the AVX-512 build picked there, it would die of an illegal instruction."""
    out, _ = nano_multi
    img, q = tmp_path / "scene.png", "how many objects are there?"
    render(G.sample(20261207, 0)["scene"], 96).save(img)
    p = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", PICK, str(out), str(img), q],
                       capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin",
                                                                         "PYTHONDONTWRITEBYTECODE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    target, answer, score = p.stdout.split()
    want = edge_slim.load("slimpajama-nano", backend="ort", threads=1).ask(img, q)
    assert target == "x86-64" and answer == want.answer and abs(float(score) - want.score) < 1e-4, (p.stdout, want)

