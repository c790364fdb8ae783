"""`edge-slim eval` on the shipped model: the issue's targets, on a smaller fixed sample."""
import json

import pytest

from conftest import cli
from edge_slim.scenes.grammar import FAMILIES

KEYS = {"vqa_accuracy", "per_family", "match_r1", "locate_iou50", "samples", "seed"}


def test_eval_meets_targets_through_cli():
    d = json.loads(cli("eval", "--samples", 300, "--seed", 11, "--json", check=0).stdout)
    assert KEYS <= set(d) and d["samples"] == 300 and d["seed"] == 11
    assert set(d["per_family"]) == set(FAMILIES)
    assert d["vqa_accuracy"] >= 0.92, d
    assert d["match_r1"] >= 0.92, d
    assert d["locate_iou50"] >= 0.85, d


@pytest.mark.parametrize("backend", ["numpy"])
def test_eval_other_backend_agrees(backend):
    a = json.loads(cli("eval", "--samples", 20, "--seed", 12, "--json", check=0).stdout)
    b = json.loads(cli("eval", "--samples", 20, "--seed", 12, "--backend", backend, "--json", check=0).stdout)
    assert b["backend"] == backend
    for k in ("vqa_accuracy", "match_r1", "locate_iou50"):
        assert abs(a[k] - b[k]) <= 0.01, (k, a, b)


def test_eval_renderers_side_by_side_through_cli():
    from conftest import assert_clean_error
    d = json.loads(cli("eval", "--samples", 2, "--renderer", "flat,unseen", "--json", check=0).stdout)
    assert d["renderers"] == ["flat", "unseen"] and d["seed"] == 1
    for name in d["renderers"]:
        r = d["results"][name]
        assert KEYS <= set(r) and r["renderer"] == name and r["samples"] == 2
    one = json.loads(cli("eval", "--samples", 2, "--renderer", "unseen", "--json", check=0).stdout)
    assert one["renderer"] == "unseen" and one["per_family"] == d["results"]["unseen"]["per_family"]
    text = cli("eval", "--samples", 1, "--renderer", "raycast,varied2d", check=0).stdout
    assert "raycast" in text.splitlines()[0] and "varied2d" in text.splitlines()[0] and "match R@1" in text
    p = cli("eval", "--samples", 1, "--renderer", "flat,cartoon")
    assert_clean_error(p, 3)
    assert len(p.stderr.strip().splitlines()) == 1 and "cartoon" in p.stderr
