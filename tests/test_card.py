"""MODEL_CARD.md is written from a run's own logs, for flat-only runs and for renderer mixes."""
import json

import pytest

torch = pytest.importorskip("torch")


def _card(tmp_path, evals, args):
    from edge_slim.aot.model.card import model_card
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text(json.dumps(args))
    (run / "log.jsonl").write_text(json.dumps({"step": 100, "lr": 0.001, "time_s": 60.0, "vqa": 0.5}) + "\n")
    (run / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    manifest = {"name": "m", "config": {}, "toolchain": {"opset": 17}, "files": {"model.onnx": {"bytes": 10}}}
    return model_card(torch.nn.Linear(2, 2), run, manifest, {"parity_max_abs_diff": 1e-6})


FIG = {"vqa_accuracy": 0.5, "per_family": {}, "match_r1": 0.25, "locate_iou50": 0.75}


def test_card_of_a_flat_run(tmp_path):
    text = _card(tmp_path, [{"step": 100, **FIG}], {"size": "tiny", "renderers": "flat"})
    assert "| 100 | 0.500 | 0.250 | 0.750 |" in text and "--renderers" not in text


def test_card_of_a_renderer_mix_run_lists_each_renderer(tmp_path):
    evals = [{"step": 100, "flat": FIG, "raycast": {**FIG, "vqa_accuracy": 0.4}}]
    text = _card(tmp_path, evals, {"size": "tiny", "renderers": "flat:0.5,raycast:0.5", "init_from": "b"})
    assert "| 100 | flat | 0.500 |" in text and "| 100 | raycast | 0.400 |" in text
    assert "--renderers flat:0.5,raycast:0.5 --init-from b" in text
