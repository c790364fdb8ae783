"""The everyday path through the real CLI on the real shipped model, and every error path."""
import json

import pytest

from conftest import EXAMPLES, assert_clean_error, cli

IMG = EXAMPLES / "images" / "scene0.png"


def test_ask_json_shape(examples):
    q = examples[0]["questions"][0]
    p = cli("ask", EXAMPLES / examples[0]["image"], q["question"], "--json", check=0)
    d = json.loads(p.stdout)
    assert set(d) == {"answer", "score", "top", "backend", "latency_ms"}
    assert d["backend"] == "ort" and 0 < d["score"] <= 1 and d["latency_ms"] > 0
    assert d["top"][0][0] == d["answer"] and len(d["top"]) == 5
    assert all(a[1] >= b[1] for a, b in zip(d["top"], d["top"][1:]))


def test_ask_answers_the_examples(examples):
    """The README's promise: questions about the sample images get their expected answers."""
    ok = total = 0
    for e in examples:
        for q in e["questions"]:
            d = json.loads(cli("ask", EXAMPLES / e["image"], q["question"], "--json", check=0).stdout)
            ok += d["answer"] == q["answer"]
            total += 1
    assert ok / total >= 0.85, f"{ok}/{total}"


def test_ask_text_output_and_stdin():
    p = cli("ask", "-", "what color is the large cylinder?", input=IMG.read_bytes(), check=0)
    assert p.stdout.decode().strip()


def test_match_json(examples):
    e = examples[1]
    d = json.loads(cli("match", EXAMPLES / e["image"], *e["match"]["texts"], "--json", check=0).stdout)
    assert set(d) >= {"scores", "best"} and len(d["scores"]) == 8 and d["best"] == max(range(8), key=d["scores"].__getitem__)


def test_locate_json_and_annotated_output(examples, tmp_path):
    e = examples[2]
    out = tmp_path / "boxed.png"
    d = json.loads(cli("locate", EXAMPLES / e["image"], e["locate"]["phrase"], "--out", out, "--json", check=0).stdout)
    assert set(d) >= {"box", "score"} and len(d["box"]) == 4
    x0, y0, x1, y1 = d["box"]
    assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 192  # pixels of the 192x192 input image
    from PIL import Image
    assert Image.open(out).size == (192, 192)


def test_info_json():
    d = json.loads(cli("info", "--json", check=0).stdout)
    assert d["name"] == "slimpajama-tiny" and d["path"] and d["files"]
    for k in ("schema", "config", "inputs", "outputs", "precision", "tokenizer", "answers", "preprocess",
              "toolchain", "source_model_sha256", "eval"):
        assert k in d


@pytest.mark.parametrize("cmd", ["ask", "match", "locate", "describe", "info", "eval", "train", "export", "targets",
                                 "compile", "run", "quantize", "bench"])
def test_every_command_has_help(cmd):
    p = cli(cmd, "--help", check=0)
    assert "Usage:" in p.stdout


# ---- error paths: exit codes and one clean line ---------------------------------------------

def test_usage_errors_exit_2():
    assert_clean_error(cli("ask"), 2)
    assert_clean_error(cli("ask", IMG, "what?", "--backend", "nope"), 2)
    assert_clean_error(cli("frobnicate"), 2)


def test_missing_image_exit_3(tmp_path):
    assert_clean_error(cli("ask", tmp_path / "none.png", "what color is the cube?"), 3)


@pytest.mark.parametrize("payload", [b"", b"garbage bytes, not an image", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"])
def test_corrupt_image_exit_3(tmp_path, payload):
    f = tmp_path / "bad.png"
    f.write_bytes(payload)
    assert_clean_error(cli("ask", f, "what color is the cube?"), 3)


def test_empty_or_huge_question_exit_3():
    assert_clean_error(cli("ask", IMG, ""), 3)
    assert_clean_error(cli("ask", IMG, "  ?? "), 3)
    assert_clean_error(cli("ask", IMG, "cube " * 1000), 3)


def test_missing_model_exit_4(tmp_path):
    assert_clean_error(cli("ask", IMG, "what?", "--model", tmp_path / "nothing"), 4)
    assert_clean_error(cli("info", tmp_path), 4)  # a directory without a manifest


def test_tampered_model_exit_4(bundle_copy):
    f = bundle_copy / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    p = cli("ask", IMG, "what color is the cube?", "--model", bundle_copy)
    assert_clean_error(p, 4)
    assert "checksum" in p.stderr


def test_damaged_manifest_exit_4(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    assert_clean_error(cli("ask", IMG, "what?", "--model", bundle_copy), 4)


def test_artifact_for_another_backend_exit_4(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format"] = "tvm"
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert_clean_error(cli("ask", IMG, "what?", "--model", bundle_copy, "--backend", "ort"), 4)
