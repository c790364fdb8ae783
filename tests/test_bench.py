"""`edge-slim bench`: the paired side-by-side harness, through the real CLI on the shipped bundles.

No test asserts a speed (benchmarks are not timed tests); they check what is timed, how ratios pair up,
and that bad arguments give one clean line.
"""
import json

import pytest

from conftest import assert_clean_error, cli, shipped_dir


def test_bench_shipped_pair_json():
    p = cli("bench", "--rounds", "2", "--block", "3", "--threads", "1,2", "--call", "model", "--json", check=0)
    r = json.loads(p.stdout)
    res = r["results"]
    assert [(x["precision"], x["threads"]) for x in res] == [("fp32", 1), ("int8", 1), ("fp32", 2), ("int8", 2)]
    assert {x["call"] for x in res} == {"model"} and not any(x["together"] or "vs" in x for x in res)
    assert all(x["backend"] == "ort" and x["calls"] == 6 and 0 < x["min_ms"] <= x["p50_ms"] <= x["p90_ms"] for x in res)
    # each ratio is to the first configuration with the same threads: fp32 at 1 for int8 at 1, and so on
    assert res[1]["baseline"] == res[0]["label"] and res[3]["baseline"] == res[2]["label"]
    assert res[0]["paired_ratio"] == res[0]["p50_ratio"] == 1.0 and res[2]["paired_ratio"] == 1.0
    assert res[1]["p50_ratio"] == pytest.approx(res[1]["p50_ms"] / res[0]["p50_ms"], abs=2e-3)
    lo, hi = res[1]["paired_p10_p90"]
    assert lo <= res[1]["paired_ratio"] <= hi
    assert r["cpu"]["model_name"] and r["rounds"] == 2 and r["block"] == 3 and r["inputs"] >= 8


def test_bench_backends_of_one_model_table():
    p = cli("bench", "--precision", "int8", "--backend", "ort,numpy", "--threads", "1", "--rounds", "1", "--block", "1",
            check=0)
    lines = p.stdout.splitlines()
    assert "flags:" in lines[0]      # the machine comes first: ratios differ between CPUs
    rows = [ln for ln in lines if ln.startswith("| slimpajama")]
    # default calls: the model call and the full ask, per backend
    assert len(rows) == 4 and all("| ort |" in r for r in rows[:2]) and all("| numpy |" in r for r in rows[2:])
    cells = [[c.strip() for c in r.split("|")] for r in rows]
    assert [c[5] for c in cells] == ["model call", "ask"] * 2
    assert cells[0][9] == cells[1][9] == "1.000"        # the baselines' own ratios (ort, per call)
    assert cells[1][11].endswith("of model call") and cells[0][11] == ""


def test_bench_questions_together_and_full_calls_json():
    """--questions N and --together add rows, each compared with its own configuration in the same rounds."""
    p = cli("bench", "--threads", "1", "--rounds", "2", "--block", "2", "--warmup", "1", "--questions", "3",
            "--together", "--image-px", "192", "--json", check=0)
    r = json.loads(p.stdout)
    res = r["results"]
    assert r["together"] is True and r["questions"] == 3 and r["image_px"] == 192
    assert set(r["timed"]) == {"model", "ask", "ask x3"} and "PNG" in r["timed"]["ask"]
    key = [(x["precision"], x["call"], x["together"]) for x in res]
    calls = ["model", "ask", "ask x3"]
    assert key == [(p_, c, t) for t in (False, True) for p_ in ("fp32", "int8") for c in calls]
    assert all(x["calls"] == 4 and 0 < x["min_ms"] <= x["p50_ms"] for x in res)
    by = {k: x for k, x in zip(key, res)}
    assert "vs" not in by[("fp32", "model", False)]
    assert by[("int8", "ask", False)]["vs"]["of"] == "model call"
    assert by[("int8", "ask x3", False)]["vs"]["of"] == "1 question"
    assert all(by[(p_, c, True)]["vs"]["of"] == "alone" for p_ in ("fp32", "int8") for c in calls)
    # cross-configuration baselines stay within one call kind and one mode: int8 together / fp32 together
    assert by[("int8", "ask", True)]["baseline"] == by[("fp32", "ask", True)]["label"]
    assert by[("int8", "model", False)]["baseline"] == by[("fp32", "model", False)]["label"]
    v = by[("fp32", "ask", True)]["vs"]
    assert v["paired_p10_p90"][0] <= v["paired_ratio"] <= v["paired_p10_p90"][1]


def test_bench_refuses_models_of_different_inputs(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["inputs"][0]["shape"] = [1, 3, 64, 64]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    p = cli("bench", shipped_dir(), bundle_copy, "--rounds", "1", "--block", "1")
    assert_clean_error(p, 3)
    assert "other inputs" in p.stderr


@pytest.mark.parametrize("args", [["--threads", "0"], ["--threads", "1,x"], ["--threads", "2,2"],
                                  ["--backend", "ort,gpu"], ["--precision", "fp16"], ["--rounds", "0"],
                                  ["--call", "model,decode"], ["--questions", "1"],
                                  ["--together", "--precision", "fp32", "--threads", "1"]])
def test_bench_usage_errors_exit_2(args):
    assert_clean_error(cli("bench", *args), 2)


def test_bench_missing_or_wrong_model_exit_4(tmp_path):
    assert_clean_error(cli("bench", tmp_path / "none"), 4)
    assert_clean_error(cli("bench", "--backend", "tvm", "--rounds", "1"), 4)   # ONNX bundles do not run on tvm
