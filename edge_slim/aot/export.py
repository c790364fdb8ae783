"""Export a trained SlimPajama to an ONNX bundle (static shapes, named inputs/outputs).

The bundle is written to a temporary directory next to the destination and renamed
into place, so an interrupted export never leaves a half-written model.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..runtime import bundle as B
from ..scenes.grammar import ANSWERS, SYNONYMS, vocabulary
from ..vision import preprocess as P
from .model import INPUT_NAMES, OUTPUT_NAMES, SlimPajama

# Opset 20 has a Gelu op: the exporter writes each GELU as one node instead of the 5-node
# x * 0.5 * (1 + erf(x / sqrt2)) chain that ONNX Runtime's fusion does not match (~17 % of fp32 time).
OPSET = 20


def example_inputs(model: SlimPajama, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, model.cfg.image_size, model.cfg.image_size, generator=g)
    tokens = torch.randint(5, model.cfg.vocab_size, (1, model.cfg.max_tokens), generator=g)
    tokens[0, 0], tokens[0, 9:] = 2, 0
    return image, tokens


def to_onnx(model: SlimPajama, path: Path) -> None:
    """Write the fp32 ONNX graph of `model` (batch 1, opset OPSET) to `path`."""
    import onnx
    model = model.eval()
    args = example_inputs(model)
    with torch.no_grad():
        # The dynamo exporter with static shapes gives a clean graph: no Shape/Identity/Constant
        # chains, which TVM's ONNX importer cannot follow and the NumPy backend need not implement.
        torch.onnx.export(model, args, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    m.doc_string = f"SlimPajama {model.cfg.name}"
    onnx.save(m, str(path))


def manifest_for(model: SlimPajama, eval_numbers: dict | None = None, extra: dict | None = None) -> dict:
    cfg = model.cfg
    import onnx
    return {
        "schema": B.SCHEMA_VERSION,
        "name": cfg.name,
        "format": "onnx",
        "precision": "fp32",
        "model_file": "model.onnx",
        "config": cfg.to_dict(),
        "inputs": [{"name": "image", "shape": [1, 3, cfg.image_size, cfg.image_size], "dtype": "float32"},
                   {"name": "tokens", "shape": [1, cfg.max_tokens], "dtype": "int64"}],
        "outputs": [{"name": "answer_logits", "shape": [1, cfg.num_answers], "dtype": "float32"},
                    {"name": "match_logit", "shape": [1], "dtype": "float32"},
                    {"name": "box", "shape": [1, 4], "dtype": "float32"},
                    {"name": "box_score", "shape": [1], "dtype": "float32"},
                    {"name": "image_embed", "shape": [1, cfg.embed_dim], "dtype": "float32"},
                    {"name": "text_embed", "shape": [1, cfg.embed_dim], "dtype": "float32"}],
        "tokenizer": {"kind": "word", "vocab": vocabulary(), "max_len": cfg.max_tokens, "synonyms": SYNONYMS},
        "answers": list(ANSWERS),
        "preprocess": {"size": cfg.image_size, "resize": "bilinear", "mean": P.MEAN, "std": P.STD,
                       "layout": "NCHW", "color": "RGB", "exif_transpose": True},
        "target": None,
        "toolchain": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET},
        "eval": eval_numbers or {},
        **(extra or {}),
    }


def export_bundle(model: SlimPajama, out: Path, eval_samples: int = 0, run_dir: Path | None = None,
                  extra: dict | None = None) -> dict:
    """Export `model` as an fp32 ONNX bundle at `out`, atomically.

    Checks PyTorch vs ONNX Runtime parity; with eval_samples, evaluates the exported graph
    through the runtime and records the numbers; with run_dir (a training run), writes a
    MODEL_CARD.md from its logs. Returns a summary dict.
    """
    out = Path(out)
    with B.staging_dir(out) as tmp:
        to_onnx(model, tmp / "model.onnx")
        manifest = manifest_for(model, None, extra)
        manifest["source_model_sha256"] = hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest()
        manifest = B.write_manifest(tmp, manifest)
        res = {"bundle": str(out), "parity_max_abs_diff": parity(model, tmp / "model.onnx")}
        if eval_samples:
            import edge_slim
            from ..scenes.evaluate import evaluate
            manifest["eval"] = res["eval"] = evaluate(edge_slim.load(tmp, backend="ort"), samples=eval_samples)
        if run_dir is not None:
            from .card import model_card
            (tmp / "MODEL_CARD.md").write_text(model_card(model, Path(run_dir), manifest, res))
        B.write_manifest(tmp, manifest)
    return res


def parity(model: SlimPajama, onnx_path: Path, n: int = 8) -> float:
    """Max abs difference between PyTorch and ONNX Runtime over n random inputs."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for s in range(n):
        image, tokens = example_inputs(model, seed=s)
        with torch.no_grad():
            ref = [t.numpy() for t in model(image, tokens)]
        got = sess.run(list(OUTPUT_NAMES), {"image": image.numpy(), "tokens": tokens.numpy()})
        worst = max(worst, max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
    return worst
