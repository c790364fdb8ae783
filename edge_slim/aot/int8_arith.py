"""Which integer arithmetic ONNX Runtime's uint8 x int8 kernels use on this CPU, and when it matters.

On x86 without VNNI, ONNX Runtime (MLAS, AVX2) multiplies uint8 activations by int8 weights with
`vpmaddubsw`, which adds each pair of adjacent products (k, k+1) into an int16 with saturation before
widening to int32: a pair of 255 * 127 products (64,770) overflows int16 (32,767). VNNI (`vpdpbusd`), ARM,
TVM and the NumPy backend compute exact int32 sums. A weight kept to 7 bits (|w| <= 64) can never
saturate: 2 * 255 * 64 = 32,640 <= 32,767, so a bundle quantized that way answers the same everywhere.
"""
from __future__ import annotations

import functools

import numpy as np

from ..runtime.backends.int8_avx2 import EXACT_WEIGHT_MAX, saturating_pairs_matmul  # noqa: F401 (re-export)

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
