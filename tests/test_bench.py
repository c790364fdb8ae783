"""`edge-slim bench`: the paired side-by-side harness, through the real CLI on the shipped bundles.

No test asserts a speed (benchmarks are not timed tests); they check what is timed, how ratios pair up,
and that bad arguments give one clean line.
"""
import json

import pytest

from conftest import assert_clean_error, cli, shipped_dir


def test_bench_shipped_pair_json():
    p = cli("bench", "--rounds", "2", "--block", "3", "--threads", "1,2", "--json", check=0)
    r = json.loads(p.stdout)
    res = r["results"]
    assert [(x["precision"], x["threads"]) for x in res] == [("fp32", 1), ("int8", 1), ("fp32", 2), ("int8", 2)]
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
    assert len(rows) == 2 and "| ort |" in rows[0] and "| numpy |" in rows[1]
    assert rows[0].split("|")[8].strip() == "1.000"     # the baseline's own ratio


def test_bench_refuses_models_of_different_inputs(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["inputs"][0]["shape"] = [1, 3, 64, 64]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    p = cli("bench", shipped_dir(), bundle_copy, "--rounds", "1", "--block", "1")
    assert_clean_error(p, 3)
    assert "other inputs" in p.stderr


@pytest.mark.parametrize("args", [["--threads", "0"], ["--threads", "1,x"], ["--threads", "2,2"],
                                  ["--backend", "ort,gpu"], ["--precision", "fp16"], ["--rounds", "0"]])
def test_bench_usage_errors_exit_2(args):
    assert_clean_error(cli("bench", *args), 2)


def test_bench_missing_or_wrong_model_exit_4(tmp_path):
    assert_clean_error(cli("bench", tmp_path / "none"), 4)
    assert_clean_error(cli("bench", "--backend", "tvm", "--rounds", "1"), 4)   # ONNX bundles do not run on tvm
