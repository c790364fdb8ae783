"""Backends by name, imported on demand (tinygrad-style): a failed import names the extra to install.

A backend runs one bundle's graph: `Backend(bundle, threads)` then `run(feeds) -> outputs`,
where feeds and outputs are dicts of NumPy arrays keyed by the manifest's input/output names.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from ...errors import MissingDependencyError, ModelError

# name -> ("module:Class", pip extra that provides its dependency, or None)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "ort": ("edge_slim.runtime.backends.ort_backend:OrtBackend", "ort"),
    "numpy": ("edge_slim.runtime.backends.numpy_backend:NumpyBackend", None),
    "tvm": ("edge_slim.runtime.backends.tvm_backend:TvmBackend", "tvm-runtime"),
    "rpc": ("edge_slim.runtime.backends.rpc_backend:RpcBackend", "tvm"),  # a board through a TVM RPC tracker
}

# the bundle format each backend runs
FORMATS = {"ort": "onnx", "numpy": "onnx", "tvm": "tvm", "rpc": "tvm"}


class Backend(Protocol):
    name: str

    def __init__(self, bundle, threads: int | None = None) -> None: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def backend_class(name: str):
    """The class for backend `name`, importing its module now."""
    if name not in BACKENDS:
        raise ModelError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    target, extra = BACKENDS[name]
    mod, cls = target.split(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except ImportError as e:
        hint = f"pip install 'edge-slim[{extra}]'" if extra else "reinstall edge-slim"
        raise MissingDependencyError(f"backend {name!r} needs {e.name or e}: {hint}") from None


def available(name: str) -> bool:
    try:
        backend_class(name)
        return True
    except ModelError:
        return False
