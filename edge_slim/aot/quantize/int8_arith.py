"""Which integer arithmetic ONNX Runtime's uint8 x int8 kernels use on this CPU, and when it matters.

On x86 without VNNI, ONNX Runtime (MLAS, AVX2) multiplies uint8 activations by int8 weights with
`vpmaddubsw`, which adds each pair of adjacent products (k, k+1) into an int16 with saturation before
widening to int32: a pair of 255 * 127 products (64,770) overflows int16 (32,767). VNNI (`vpdpbusd`), ARM,
TVM and the NumPy backend compute exact int32 sums. A weight kept to 7 bits (|w| <= 64) can never
saturate: 2 * 255 * 64 = 32,640 <= 32,767, so a bundle quantized that way answers the same everywhere.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BadInputError
from ...runtime.backends.int8_avx2 import EXACT_WEIGHT_MAX, saturating_pairs_matmul  # noqa: F401 (re-export)

if TYPE_CHECKING:
    from .slimpajama import Form

# named as the NumPy backend's `arithmetic` that reproduces each
EXACT, SATURATING = "exact", "ort-avx2"


@functools.lru_cache(maxsize=None)
def ort_u8s8_arithmetic() -> str:
    """Probe ONNX Runtime on this CPU with a random uint8 [8, 64] x int8 [64, 16] MatMulInteger:
    "exact" (VNNI, ARM, ...) or "ort-avx2" (saturating pairs: x86 AVX2 without VNNI)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 64)).astype(np.uint8)
    b = rng.integers(-128, 128, (64, 16)).astype(np.int8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [8, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [8, 16])],
                          [numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    so = ort.SessionOptions()
    so.log_severity_level = 3
    y = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    if np.array_equal(y, a.astype(np.int32) @ b.astype(np.int32)):
        return EXACT
    if np.array_equal(y, saturating_pairs_matmul(a, b)):
        return SATURATING
    raise RuntimeError("ONNX Runtime's MatMulInteger matches neither exact nor pairwise-saturating arithmetic")


# -- which forms can saturate, and which arithmetics `edge-slim quantize` checks ----------------------
ARITHMETIC_CHOICES = ("auto", "exact", "ort-avx2", "both")


def may_saturate(form: Form, weight_bits: int) -> bool:
    """Whether the form runs uint8 x int8 products that ORT's AVX2 kernels can saturate (8-bit weights only).
    int8 x int8 (static -s8), ConvInteger and fp32-compute (weight-only) steps were measured exact there."""
    return weight_bits == 8 and any(s.kind == "dynamic" and set(s.ops) - {"Conv"} or
                                    s.kind == "static" and s.activation == "u8" for s in form.steps)


def integer_form(form: Form, weight_bits: int, checked: list[str]) -> dict:
    """The manifest's record of the integer arithmetic the bundle asks of its runtime."""
    sat = may_saturate(form, weight_bits)
    lim = 64 if weight_bits == 7 else 127
    return {"activations": "uint8" if any(s.kind == "dynamic" or s.activation == "u8" for s in form.steps
                                          if s.kind != "weights") else "int8",
            "weights": "int8", "weight_bits": weight_bits, "weight_range": [-lim, lim],
            "exact_on_every_cpu": not sat,
            "why": ("a pair of uint8 x int8 products can reach 2 x 255 x 127 = 64,770 > 32,767: ONNX Runtime's AVX2 "
                    "kernels (x86 without VNNI) saturate it in int16; VNNI, ARM, TVM and NumPy sum exactly" if sat
                    else f"|products pair| <= 2 x 255 x {lim} = {2 * 255 * lim} <= 32,767: no int16 pair sum can "
                    "saturate, so every runtime and CPU computes the same exact int32 sums" if weight_bits == 7
                    else "no uint8 x int8 products (int8 x int8, ConvInteger or fp32 compute), which ONNX Runtime's "
                    "AVX2 kernels also compute exactly"),
            "checked_arithmetic": checked}


def check_arithmetics(form: Form, weight_bits: int, arithmetic: str = "auto") -> list[str]:
    """Which integer arithmetics the accuracy budget is checked with: "auto" = every one that can give a
    different answer for this form (only "exact" when no product pair can saturate)."""
    if arithmetic not in ARITHMETIC_CHOICES:
        raise BadInputError(f"unknown arithmetic {arithmetic!r}; choose from {', '.join(ARITHMETIC_CHOICES)}")
    if arithmetic == "auto":
        return ["exact", "ort-avx2"] if may_saturate(form, weight_bits) else ["exact"]
    return ["exact", "ort-avx2"] if arithmetic == "both" else [arithmetic]
