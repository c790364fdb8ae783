"""edge-slim: run the SlimPajama image+text model on edge devices, fully offline.

    import edge_slim
    s = edge_slim.load()                       # the shipped SlimPajama-Tiny, ONNX Runtime
    s.ask("photo.png", "what color is the cube?").answer

Importing this package loads only NumPy, Pillow and the chosen backend; never torch or tvm.
"""
from __future__ import annotations

__version__ = "0.1.0"

PRECISIONS = {"fp32": "slimpajama-tiny", "int8": "slimpajama-tiny-int8"}


def load(path=None, backend: str = "auto", threads: int | None = None, precision: str | None = None,
         backend_options: dict | None = None):
    """Open a model bundle (default: the shipped SlimPajama-Tiny) and return a Session.

    `precision` picks a shipped variant ("fp32" or "int8") when `path` is not given; `backend_options` go to
    the backend (e.g. {"tracker": "HOST:PORT", "key": "rpi5"} for rpc, {"arithmetic": "ort-avx2"} for numpy).
    """
    from .runtime.bundle import open_bundle
    from .runtime.session import Session
    return Session(open_bundle(shipped(precision) if path is None else path), backend=backend, threads=threads,
                   backend_options=backend_options)


def shipped(precision: str | None = None):
    """The directory of a shipped bundle: "fp32" (the default) or "int8"."""
    from .errors import ModelError
    from .runtime.bundle import default_model_dir
    if precision in (None, "fp32"):
        return default_model_dir()
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; shipped: {', '.join(PRECISIONS)}")
    return default_model_dir().parent / PRECISIONS[precision]


__all__ = ["load", "shipped", "__version__"]
