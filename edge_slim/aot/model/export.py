"""Export a trained SlimPajama to an ONNX bundle (static shapes, named inputs/outputs).

The bundle is written to a temporary directory next to the destination and renamed
into place, so an interrupted export never leaves a half-written model.

A model with a caption decoder gets one more output on model.onnx (`describe_memory`, the
decoder's memory tokens) and one more graph, describe_decoder.onnx, that turns memory + caption
so far into next-token logits; the manifest's `describe` entry says how to drive it. The image is
encoded once per caption; model.onnx's other outputs are unchanged.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ...runtime import bundle as B
from ...scenes import caption as CAP
from ...scenes.grammar import ANSWERS, SYNONYMS, vocabulary
from ...vision import preprocess as P
from .slimpajama import INPUT_NAMES, MEMORY_OUTPUT, DescribePrefix, DescribeStep, SlimPajama, output_names

# Opset 20 has a Gelu op: the exporter writes each GELU as one node instead of the 5-node
# x * 0.5 * (1 + erf(x / sqrt2)) chain that ONNX Runtime's fusion does not match (~17 % of fp32 time).
OPSET = 20
DESCRIBE_GRAPH = "describe_decoder.onnx"
# How describe_decoder.onnx is driven. "kv_cache": one token per call with the self-attention keys
# and values carried between calls; "prefix": the whole padded prefix per call. Both were measured
# (docs/bundle.md); the cache is the default.
DECODINGS = ("kv_cache", "prefix")
DEFAULT_DECODING = "kv_cache"


def example_inputs(model: SlimPajama, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, model.cfg.image_size, model.cfg.image_size, generator=g)
    tokens = torch.randint(5, model.cfg.vocab_size, (1, model.cfg.max_tokens), generator=g)
    tokens[0, 0], tokens[0, 9:] = 2, 0
    return image, tokens


def to_onnx(model: SlimPajama, path: Path) -> None:
    """Write the fp32 ONNX graph of `model` (batch 1, opset OPSET) to `path`."""
    model = model.eval()
    args = example_inputs(model)
    with torch.no_grad():
        # The dynamo exporter with static shapes gives a clean graph: no Shape/Identity/Constant
        # chains, which TVM's ONNX importer cannot follow and the NumPy backend need not implement.
        torch.onnx.export(model, args, str(path), input_names=list(INPUT_NAMES),
                          output_names=list(output_names(model.cfg)),
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    _finish(path, f"SlimPajama {model.cfg.name}")


def _finish(path: Path, doc: str) -> None:
    import onnx
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    m.doc_string = doc
    onnx.save(m, str(path))


def describe_example(model: SlimPajama, decoding: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Feeds of describe_decoder.onnx (batch 1) with random memory, by input name."""
    cfg, dec = model.cfg, model.decoder
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(1, cfg.grid * cfg.grid, cfg.dim, generator=g)
    if decoding == "prefix":
        tokens = torch.zeros(1, cfg.caption_len, dtype=torch.int64)
        tokens[0, 0], tokens[0, 1:5] = CAP.BOS, torch.randint(3, cfg.caption_vocab, (4,), generator=g)
        return {"memory": memory, "tokens": tokens}
    return {"memory": memory, "token": torch.tensor([[CAP.BOS]]), "pos": torch.tensor([0]),
            "past_k": torch.randn(dec.cache_shape(), generator=g), "past_v": torch.randn(dec.cache_shape(), generator=g)}


DESCRIBE_OUTPUTS = {"kv_cache": ("logits", "present_k", "present_v"), "prefix": ("logits",)}


def describe_to_onnx(model: SlimPajama, path: Path, decoding: str = DEFAULT_DECODING) -> None:
    """Write the caption decoder as describe_decoder.onnx in the given decoding form."""
    if model.decoder is None:
        raise ValueError("this model has no caption decoder (describe_layers=0)")
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}; choose from {', '.join(DECODINGS)}")
    graph = (DescribeStep if decoding == "kv_cache" else DescribePrefix)(model.decoder).eval()
    feeds = describe_example(model, decoding)
    with torch.no_grad():
        torch.onnx.export(graph, tuple(feeds.values()), str(path), input_names=list(feeds),
                          output_names=list(DESCRIBE_OUTPUTS[decoding]), opset_version=OPSET, dynamo=True,
                          external_data=False, verbose=False)
    _finish(path, f"SlimPajama {model.cfg.name} caption decoder ({decoding})")


def describe_manifest(model: SlimPajama, decoding: str = DEFAULT_DECODING) -> dict:
    """The manifest's `describe` entry: which graph, how to drive it, and the caption vocabulary."""
    cfg = model.cfg
    spec = lambda n, shape, dt="float32": {"name": n, "shape": list(shape), "dtype": dt}
    mem = spec("memory", (1, cfg.grid * cfg.grid, cfg.dim))
    if decoding == "kv_cache":
        cache = model.decoder.cache_shape()
        inputs = [mem, spec("token", (1, 1), "int64"), spec("pos", (1,), "int64"), spec("past_k", cache),
                  spec("past_v", cache)]
        outputs = [spec("logits", (1, cfg.caption_vocab)), spec("present_k", cache), spec("present_v", cache)]
    else:
        inputs = [mem, spec("tokens", (1, cfg.caption_len), "int64")]
        outputs = [spec("logits", (1, cfg.caption_len, cfg.caption_vocab))]
    return {"graph": DESCRIBE_GRAPH, "decoding": decoding, "memory_output": MEMORY_OUTPUT,
            "vocab": list(CAP.CAPTION_VOCAB), "max_len": cfg.caption_len, "bos": CAP.BOS, "eos": CAP.EOS,
            "pad": CAP.PAD, "inputs": inputs, "outputs": outputs}


def manifest_for(model: SlimPajama, eval_numbers: dict | None = None, extra: dict | None = None) -> dict:
    cfg = model.cfg
    import onnx
    memory = ([{"name": MEMORY_OUTPUT, "shape": [1, cfg.grid * cfg.grid, cfg.dim], "dtype": "float32"}]
              if model.decoder is not None else [])
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
                    {"name": "text_embed", "shape": [1, cfg.embed_dim], "dtype": "float32"}, *memory],
        "tokenizer": {"kind": "word", "vocab": vocabulary(), "max_len": cfg.max_tokens, "synonyms": SYNONYMS},
        "answers": list(ANSWERS),
        "preprocess": {"size": cfg.image_size, "resize": "bilinear", "mean": P.MEAN, "std": P.STD,
                       "layout": "NCHW", "color": "RGB", "exif_transpose": True},
        "target": None,
        "toolchain": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET},
        "eval": eval_numbers or {},
        **({"describe": describe_manifest(model)} if model.decoder is not None else {}),
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
        if model.decoder is not None:
            describe_to_onnx(model, tmp / DESCRIBE_GRAPH)
        manifest = manifest_for(model, None, extra)
        manifest["source_model_sha256"] = hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest()
        manifest = B.write_manifest(tmp, manifest)
        res = {"bundle": str(out), "parity_max_abs_diff": parity(model, tmp / "model.onnx")}
        if model.decoder is not None:
            res["describe_parity_max_abs_diff"] = describe_parity(model, tmp / DESCRIBE_GRAPH)
        if eval_samples:
            import edge_slim
            from ...scenes.evaluate import evaluate
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
        got = sess.run(list(output_names(model.cfg)), {"image": image.numpy(), "tokens": tokens.numpy()})
        worst = max(worst, max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
    return worst


def describe_parity(model: SlimPajama, onnx_path: Path, n: int = 4, decoding: str = DEFAULT_DECODING) -> float:
    """Max abs difference between PyTorch and ONNX Runtime on the caption decoder graph."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph = (DescribeStep if decoding == "kv_cache" else DescribePrefix)(model.decoder).eval()
    worst = 0.0
    for s in range(n):
        feeds = describe_example(model, decoding, seed=s)
        with torch.no_grad():
            ref = graph(*feeds.values())
        ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
        got = sess.run(list(DESCRIBE_OUTPUTS[decoding]), {k: v.numpy() for k, v in feeds.items()})
        worst = max(worst, max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
    return worst
