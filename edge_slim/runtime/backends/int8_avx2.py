"""The NumPy backend's `arithmetic="ort-avx2"`: ONNX Runtime's uint8 x int8 arithmetic on x86 without VNNI.

There, MLAS multiplies uint8 activations by int8 weights with `vpmaddubsw`, which adds each pair of
adjacent products along K into an int16 *with saturation* before the int32 sum; the activations' zero
point is subtracted afterwards (zero_point x column sum of the weights, exact). A pair of 255 x 127
products (64,770) overflows int16, so such a model can answer differently on an AVX2-only CPU than on a
VNNI or ARM one (both exact, as is the default NumPy arithmetic). Emulating it lets `edge-slim quantize`
check accuracy with the arithmetic an AVX2-only target will use, on any machine.

Measured against ONNX Runtime 1.32 under `qemu-x86_64-static -cpu Haswell` (tests/test_int8_arith.py):
MatMulInteger / QLinearMatMul pair adjacent k of the [.., M, K] x [K, N] product; QLinearConv pairs
adjacent k of its NHWC im2col order (kernel row, kernel column, input channel), the padding holding the
zero point; ConvInteger and every other integer type pair (uint8 x uint8, int8 x int8) are exact there.
Only symmetric weights (zero point 0, what ONNX Runtime's quantizers write) and ungrouped convs are
emulated; anything else is refused at load time rather than computed in a form that was never checked.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError

# the largest |int8 weight| for which no pair of uint8 x int8 products can leave int16: 2 * 255 * 64 <= 32767
EXACT_WEIGHT_MAX = 64
ARITHMETICS = ("exact", "ort-avx2")


def saturating_pairs_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 [.., M, K] x int8 [K, N] -> int32 [.., M, N], each pair of adjacent products (k, k+1) summed into
    a saturating int16 first (an odd K is padded with a zero), as `vpmaddubsw` does.

    Computed as the exact product plus a correction on the few weight pairs that can saturate at all
    (|b[k]| + |b[k+1]| > 32767 / 255): the others never leave int16, whatever the activations.
    """
    lead, k = a.shape[:-2], a.shape[-1]
    bf, hot = _plan(b)
    rows = a.reshape(-1, k)
    out = np.rint(rows.astype(np.float64) @ bf).astype(np.int64)   # exact: |sums| < 2^53
    if hot is not None:
        k0, k1, w0, w1, cols, starts = hot
        ra = np.concatenate([rows, np.zeros((rows.shape[0], 1), rows.dtype)], 1) if k % 2 else rows
        pairs = ra[:, k0].astype(np.int32) * w0 + ra[:, k1].astype(np.int32) * w1      # [rows, hot pairs]
        corr = np.clip(pairs, -32768, 32767) - pairs
        out[:, cols] += np.add.reduceat(corr, starts, axis=1)
    return out.astype(np.int32).reshape(*lead, a.shape[-2], b.shape[1])


_PLANS: dict[int, tuple] = {}  # id(weight) -> (weight, plan): weights are the graph's read-only constants


def _plan(b: np.ndarray):
    """float64 weight for the exact product, and the pairs that can saturate grouped by output column
    (computed once per constant weight)."""
    hit = _PLANS.get(id(b))
    if hit is not None and hit[0] is b:
        return hit[1]
    b32 = b.astype(np.int32)
    if b32.shape[0] % 2:
        b32 = np.concatenate([b32, np.zeros((1, b32.shape[1]), np.int32)], 0)
    j, n = np.nonzero((np.abs(b32[0::2]) + np.abs(b32[1::2])) * 255 > 32767)
    hot = None
    if j.size:
        order = np.argsort(n, kind="stable")
        j, n = j[order], n[order]
        cols, starts = np.unique(n, return_index=True)
        hot = (2 * j, 2 * j + 1, b32[2 * j, n], b32[2 * j + 1, n], cols, starts)
    plan = (b.astype(np.float64), hot)
    if not b.flags.writeable:  # only constants are cached (a fed array may change between calls)
        if len(_PLANS) > 4096:
            _PLANS.clear()
        _PLANS[id(b)] = (b, plan)
    return plan


def _u8s8(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == np.uint8 and b.dtype == np.int8


def _symmetric(zp) -> bool:
    return zp is None or not np.any(np.asarray(zp))


def _scalar_zp(zp, what: str) -> int:
    if zp is None:
        return 0
    z = np.asarray(zp).reshape(-1)
    if z.size != 1:
        raise ModelError(f"ort-avx2 arithmetic: a per-row zero point for {what} is not emulated")
    return int(z[0])


def matmul_integer(a, b, a_zp=None, b_zp=None):
    from .numpy_ops import _matmul_integer
    if not _u8s8(a, b):
        return _matmul_integer(a, b, a_zp, b_zp)
    if not _symmetric(b_zp) or b.ndim != 2:
        raise ModelError("ort-avx2 arithmetic: only a 2-D int8 weight with zero point 0 is emulated")
    za = _scalar_zp(a_zp, "A")
    return (saturating_pairs_matmul(a, b) - np.int32(za) * b.astype(np.int32).sum(0, dtype=np.int32)).astype(np.int32)


def qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp=None):
    from .numpy_ops import _requantize_product
    return _requantize_product(matmul_integer(a, b, a_zp, b_zp), a_scale, b_scale, y_scale, y_zp, a)


def qlinear_conv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp=None, b=None, *, auto_pad="NOTSET",
                 dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    from . import numpy_ops as NB
    if not _u8s8(x, w):
        return NB._qlinear_conv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b, auto_pad=auto_pad,
                                dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                                strides=strides)
    if group != 1 or not _symmetric(w_zp):
        raise ModelError("ort-avx2 arithmetic: only ungrouped QLinearConv with zero-point-0 weights is emulated")
    za = _scalar_zp(x_zp, "x")
    k_shape = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    n_sp = x.ndim - 2
    p, s, d, outs = NB._conv_geometry(x.shape[2:], k_shape, auto_pad, pads, strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p[i], p[i + n_sp]) for i in range(n_sp)], constant_values=za)
    cols, _ = NB._im2col(xp, k_shape, "VALID", None, s, d)               # [N, C*prod(k), P], (c, k...) order
    n, c, m = x.shape[0], x.shape[1], w.shape[0]
    kk = int(np.prod(k_shape))
    cols = cols.reshape(n, c, kk, -1).transpose(0, 3, 2, 1).reshape(n, -1, kk * c)   # NHWC order: (k..., c)
    wk = w.reshape(m, c, kk).transpose(2, 1, 0).reshape(kk * c, m)
    acc = saturating_pairs_matmul(cols, wk) - np.int32(za) * wk.astype(np.int32).sum(0, dtype=np.int32)  # [N, P, M]
    acc = acc.transpose(0, 2, 1).reshape(n, m, *outs)
    if b is not None:
        acc = acc + b.astype(np.int32).reshape(1, -1, *([1] * n_sp))
    mult = x_scale.astype(np.float32) * w_scale.astype(np.float32) / y_scale.astype(np.float32)
    return NB._requantize(acc, NB._per_axis(mult.reshape(-1), acc.ndim, 1), y_zp, NB._out_dtype(y_zp, x))


# op name -> function replacing the NumPy backend's exact one under arithmetic="ort-avx2"
OPS = {"MatMulInteger": matmul_integer, "QLinearMatMul": qlinear_matmul, "QLinearConv": qlinear_conv}
