"""A bring-your-own model loaded for timing (`edge-slim bench COMPILED_DIR MODEL.onnx`): a bundle without a
tokenizer (compiled by `edge-slim compile`, or quantized by `edge-slim quantize MODEL.onnx`), or a bare
.onnx file run by ONNX Runtime. It offers what edge_slim.runtime.bench uses of a Session: `bundle`,
`manifest`, `backend`, `backend_name`, `close()`; inputs are seeded random tensors of the model's shapes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import backend_class
from .bundle import Bundle, open_bundle

NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
             "uint8": np.uint8, "int8": np.int8, "bool": np.bool_}


def is_own_model(path) -> bool:
    """A bare .onnx file, or a bundle without a tokenizer (not SlimPajama)."""
    if path is None:
        return False
    p = Path(path)
    if p.suffix == ".onnx" and p.is_file():
        return True
    return p.is_dir() and not open_bundle(p, verify=False).manifest.get("tokenizer")


class OwnModel:
    """One backend on an own model (see the module docstring)."""

    def __init__(self, path, backend: str = "auto", threads: int | None = None):
        p = Path(path)
        if p.suffix == ".onnx" and p.is_file():
            # inputs: None, the shapes come from the compiled configuration benched beside it
            self.bundle = Bundle(p.parent, {"format": "onnx", "name": p.stem, "model_file": p.name,
                                            "precision": "fp32", "inputs": None, "outputs": None, "files": {}})
        else:
            self.bundle = open_bundle(p)
        self.manifest = self.bundle.manifest
        fmt = self.manifest["format"]
        self.backend_name = backend if backend != "auto" else ("tvm" if fmt == "tvm" else "ort")
        self.backend = backend_class(self.backend_name)(self.bundle, threads=threads)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def random_feeds(inputs: list[dict], samples: int, seed: int) -> list[dict]:
    """`samples` seeded feeds for static input specs: floats uniform in [0, 1), integers in 0..9."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        f = {}
        for spec in inputs:
            dt = NP_DTYPES.get(spec["dtype"], np.float32)
            shape = [d if isinstance(d, int) else 1 for d in spec["shape"]]   # a symbolic dim: size 1
            f[spec["name"]] = (rng.uniform(0, 1, shape) if np.issubdtype(dt, np.floating)
                               else rng.integers(0, 10, shape)).astype(dt)
        out.append(f)
    return out
