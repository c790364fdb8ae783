"""A trainable PyTorch SlimPajama rebuilt from an exported fp32 bundle (model.onnx + manifest).

Why: a bundle is what ships; checkpoints are not kept. Warm-starting a new training stage
(`edge-slim train --init-from BUNDLE_DIR`), distilling from the shipped teacher or pruning it
(`edge-slim slim`) all need the shipped weights back as torch parameters.

How: the ONNX exporter renames some weights (Linear weights become transposed `val_N`
constants) and folds each BatchNorm into the convolution before it. The name map is found
by exporting a model of the same config whose parameters hold distinct random values and
matching every constant of that graph to the parameter (or its transpose) it equals; the
same exporter gives the shipped graph the same names. Folded convolutions are loaded as
they are and their BatchNorm set to the identity; `calibrate_batchnorm` then gives it the
statistics of real images, so that training-mode normalization starts where the bundle is.
The result is checked against ONNX Runtime on the bundle (`parity`).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .slimpajama import Config, SlimPajama


def _fingerprint_names(cfg: Config, decoding: str | None) -> list[dict[str, tuple[str, bool]]]:
    """ONNX initializer name -> (state_dict key, transposed), for model.onnx and (with `decoding`) the
    describe decoder graph of a model of this config."""
    import onnx
    from onnx import numpy_helper

    from .export import describe_to_onnx, to_onnx

    g = torch.Generator().manual_seed(1234)
    ref = SlimPajama(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + 0.01)
    params = {k: v.detach().numpy() for k, v in ref.named_parameters()}
    maps = []
    with tempfile.TemporaryDirectory() as d:
        to_onnx(ref, Path(d) / "m.onnx")
        paths = [Path(d) / "m.onnx"]
        if decoding:
            describe_to_onnx(ref, Path(d) / "d.onnx", decoding)
            paths.append(Path(d) / "d.onnx")
        for path in paths:
            inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
            maps.append({name: hit for name, v in inits.items() if (hit := _match(v, params))})
    return maps


def _match(v: np.ndarray, params: dict[str, np.ndarray]) -> tuple[str, bool] | None:
    if v.dtype != np.float32 or v.ndim == 0:
        return None
    for k, p in params.items():
        if p.shape == v.shape and np.array_equal(p, v):
            return k, False
        if p.ndim == 2 and p.T.shape == v.shape and np.array_equal(p.T, v):
            return k, True
        if p.size == v.size and p.shape != v.shape and np.array_equal(p.reshape(v.shape), v):
            return k, False  # a squeezed parameter (e.g. pos[0]): loaded back by reshaping
    return None


def _conv_bn_pairs(model: SlimPajama) -> list[tuple[str, nn.BatchNorm2d]]:
    mods = list(model.stem)
    return [(f"stem.{i}", mods[i + 1]) for i in range(len(mods) - 1)
            if isinstance(mods[i], nn.Conv2d) and isinstance(mods[i + 1], nn.BatchNorm2d)]


def model_from_bundle(bundle: str | Path, **overrides) -> SlimPajama:
    """The bundle's SlimPajama as a torch model in eval mode. overrides change the config
    (e.g. describe_layers=2 adds a fresh caption decoder to a bundle that has none); parameters
    the bundle lacks keep their initialization and are listed in model.new_parameters."""
    import onnx
    from onnx import numpy_helper

    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    if manifest.get("quantization") or manifest.get("precision", "fp32") != "fp32":
        raise ValueError(f"{bundle} is not an fp32 bundle; rebuild from the fp32 bundle it was quantized from")
    src_cfg = Config.from_dict(manifest["config"])
    cfg = Config.from_dict({**src_cfg.to_dict(), **overrides})
    spec = manifest.get("describe")
    graphs = ["model.onnx"] + ([spec["graph"]] if spec else [])  # the caption decoder's weights live in its graph
    model = SlimPajama(cfg)
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for graph, names in zip(graphs, _fingerprint_names(src_cfg, spec["decoding"] if spec else None)):
        proto = onnx.load(str(bundle / graph))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        for name, v in inits.items():
            key, transposed = names.get(name, (name, False))
            if key in own and key not in loaded and v.dtype == np.float32:
                t = torch.from_numpy(np.array(v.T if transposed else v))
                if t.numel() == own[key].numel() and t.dim() != own[key].dim():
                    t = t.reshape(own[key].shape)
                if tuple(t.shape) != tuple(own[key].shape):
                    raise ValueError(f"{bundle}: {name} has shape {tuple(t.shape)}, {key} wants {tuple(own[key].shape)}")
                loaded[key] = t
        for node in proto.graph.node:  # biases the exporter shared between layers whose values were equal
            if node.op_type == "Gemm" and len(node.input) == 3:
                w = node.input[1]
                key = w[: -len(".weight")] + ".bias" if w.endswith(".weight") else None
                if key in own and key not in loaded and node.input[2] in inits:
                    loaded[key] = torch.from_numpy(inits[node.input[2]].copy())
    model.load_state_dict(loaded, strict=False)
    for conv, bn in _conv_bn_pairs(model):  # the bundle's conv already includes its BatchNorm
        if f"{conv}.weight" in loaded:
            bn.reset_parameters()           # weight 1, bias 0, mean 0, var 1
            bn.running_var.fill_(1.0 - bn.eps)
            idx = int(conv.split(".")[1]) + 1
            loaded.update({f"stem.{idx}.weight": bn.weight, f"stem.{idx}.bias": bn.bias})
    model.new_parameters = sorted(k for k, _ in model.named_parameters() if k not in loaded)
    return model.eval()


@torch.no_grad()
def calibrate_batchnorm(model: SlimPajama, images: torch.Tensor) -> None:
    """Give each identity BatchNorm of a rebuilt model the statistics of `images` [B,3,H,W] with
    a matching affine, so that it computes the same function in eval mode and about the same
    in training mode (batch statistics) as the folded convolution did."""
    x = images
    for m in model.stem:
        if isinstance(m, nn.BatchNorm2d):
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.weight.copy_(torch.sqrt(var + m.eps))
            m.bias.copy_(mean)
        x = m(x)


def parity(model: SlimPajama, bundle: str | Path, n: int = 4) -> float:
    """Largest |torch - ONNX Runtime| over the bundle's outputs on n random inputs."""
    import onnxruntime as ort

    from .export import example_inputs

    sess = ort.InferenceSession(str(Path(bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    model = model.eval()
    worst = 0.0
    for seed in range(n):
        image, tokens = example_inputs(model, seed)
        with torch.no_grad():
            ours = model(image, tokens)
        theirs = sess.run(None, {"image": image.numpy(), "tokens": tokens.numpy()})
        for name, t, o in zip(names, ours, theirs):
            worst = max(worst, float(np.abs(t.numpy() - o).max()))
    return worst
