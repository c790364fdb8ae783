"""The ONNX operators of the NumPy backend (numpy_backend.py): one small function per op, and `OPS`, the table
that binds an op type to its function (attributes arrive as keyword arguments).

Numerics follow the ONNX spec and, where the spec leaves room, ONNX Runtime's CPU kernels:
quantization rounds half to even and saturates; integer matmuls/convs are exact (computed in
float64, which holds every int32 accumulator of these sizes exactly); float16 MatMul, Gemm,
Conv, LayerNormalization, Softmax and reductions accumulate in float32 and round the result
to float16, like ORT's CPU kernels do. `CHECKS` refuses, at load time, attribute values a function
cannot honour.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ...errors import ModelError
from ..onnx_proto import DTYPE_NAMES, DTYPES, onnx_dtype

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _ints(x) -> list[int]:
    """An ONNX int64 tensor input (axes, shape, ...) as a list of Python ints."""
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _acc_dtype(x: np.ndarray) -> np.dtype:
    """Low-precision floats accumulate in float32 (as ORT's CPU kernels do); others keep their type."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


def _in_acc(*xs: np.ndarray) -> list[np.ndarray]:
    return [x.astype(_acc_dtype(x), copy=False) for x in xs]


def _norm_axes(axes, rank: int) -> tuple[int, ...]:
    return tuple(a + rank if a < 0 else a for a in axes)


def _per_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """Shape a per-channel scale/zero point (1-D) to broadcast along `axis` of a rank-`rank` tensor."""
    if v.ndim == 0 or v.size == 1 and v.ndim == 1:
        return v.reshape(())
    if v.ndim != 1:
        raise ModelError(f"a quantization parameter of shape {v.shape} is not per-tensor or per-axis "
                         "(blocked quantization is not supported)")
    axis = axis + rank if axis < 0 else axis
    shape = [1] * rank
    shape[axis] = v.size
    return v.reshape(shape)


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round half to even, then clamp to dtype's range: ONNX's rule for every integer quantization."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


# ---------------------------------------------------------------------------------------
# erf: W. J. Cody's rational Chebyshev approximations (Math. Comp. 1969), in float64.
# Max relative error ~1e-16 in double, far below float32 resolution.
# ---------------------------------------------------------------------------------------
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
          2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
          2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
          1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)
_SQRT_1_PI = 5.6418958354775628695e-1


def _erfc_scaled_tail(y: np.ndarray, rational: np.ndarray) -> np.ndarray:
    """exp(-y^2) * rational, with y^2 split as in Cody's code to keep full double precision."""
    ysq = np.trunc(y * 16.0) / 16.0
    return np.exp(-ysq * ysq) * np.exp(-(y - ysq) * (y + ysq)) * rational


def _erf_double(x64: np.ndarray) -> np.ndarray:
    """Cody's three-range erf, to double precision (the float64 path)."""
    y = np.minimum(np.abs(x64), 30.0)  # erf(30) == 1 exactly in double; also keeps inf finite
    out = np.empty_like(x64)

    small = y <= 0.46875
    ys = y[small]
    z = ys * ys
    num, den = _ERF_A[4] * z, z
    for i in range(3):
        num, den = (num + _ERF_A[i]) * z, (den + _ERF_B[i]) * z
    out[small] = ys * (num + _ERF_A[3]) / (den + _ERF_B[3])

    mid = ~small & (y <= 4.0)
    ym = y[mid]
    num, den = _ERF_C[8] * ym, ym
    for i in range(7):
        num, den = (num + _ERF_C[i]) * ym, (den + _ERF_D[i]) * ym
    out[mid] = 1.0 - _erfc_scaled_tail(ym, (num + _ERF_C[7]) / (den + _ERF_D[7]))

    big = ~small & ~mid
    yb = y[big]
    z = 1.0 / (yb * yb)
    num, den = _ERF_P[5] * z, z
    for i in range(4):
        num, den = (num + _ERF_P[i]) * z, (den + _ERF_Q[i]) * z
    r = z * (num + _ERF_P[4]) / (den + _ERF_Q[4])
    out[big] = 1.0 - _erfc_scaled_tail(yb, (_SQRT_1_PI - r) / yb)

    out = np.copysign(out, x64)
    out[np.isnan(x64)] = np.nan
    return out


def _erf_single(x: np.ndarray) -> np.ndarray:
    """erf for float32/float16: Cody's first two ranges in float64, without masks (2x faster).

    Past |x| = 4, erfc < 1.6e-8 so erf rounds to +-1 in float32; clamping into the middle range
    gives exactly that. The plain exp(-y*y) is accurate to double rounding here, and the result
    is correctly rounded to float32 on a dense grid over [-8, 8] (see the tests).
    """
    x64 = x.astype(np.float64)
    z = x64 * x64
    num, den = z * _ERF_A[4], z.copy()
    for i in range(3):
        num += _ERF_A[i]
        num *= z
        den += _ERF_B[i]
        den *= z
    small = x64 * (num + _ERF_A[3]) / (den + _ERF_B[3])

    y = np.clip(np.abs(x64), 0.46875, 4.0)
    num, den = y * _ERF_C[8], y.copy()
    for i in range(7):
        num += _ERF_C[i]
        num *= y
        den += _ERF_D[i]
        den *= y
    num += _ERF_C[7]
    den += _ERF_D[7]
    num /= den
    num *= np.exp(-y * y)
    mid = np.copysign(1.0 - num, x64)
    return np.where(z <= 0.46875 ** 2, small, mid).astype(x.dtype)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized erf (math.erf is scalar-only), accurate to the rounding of x's float type."""
    x = np.asarray(x)
    with np.errstate(invalid="ignore", over="ignore"):  # inf inputs pass through inf/inf in unused lanes
        if x.dtype == np.float64:
            return _erf_double(x)
        return _erf_single(x.astype(np.float32) if x.dtype != np.float16 else x)


# ---------------------------------------------------------------------------------------
# elementwise and shape ops
# ---------------------------------------------------------------------------------------
def _div(a, b):
    """Integer Div truncates toward zero (C semantics, as ORT does); float Div is IEEE."""
    if np.issubdtype(a.dtype, np.integer):
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)
    return a / b


def _pow(a, b):
    return np.power(a, b).astype(a.dtype, copy=False)


def _sigmoid(x):
    # exp(-|x|) never overflows, so no warnings and full precision on both tails.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _erf(x):
    return erf(x).astype(x.dtype, copy=False)


def _relu(x):
    return np.maximum(x, np.zeros((), x.dtype))


def _leaky_relu(x, *, alpha=0.01):
    return np.where(x >= 0, x, x * np.asarray(alpha, x.dtype))


def _gelu(x, *, approximate="none"):
    xa = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * xa * (1 + np.tanh(math.sqrt(2 / math.pi) * (xa + 0.044715 * xa ** 3)))
    else:
        y = 0.5 * xa * (1 + _erf_double(xa / math.sqrt(2)))
    return y.astype(x.dtype)


def _clip(x, lo=None, hi=None, *, min=None, max=None):  # noqa: A002 - ONNX attribute names (opset < 11)
    lo = min if lo is None else lo
    hi = max if hi is None else hi
    if lo is not None:
        x = np.maximum(x, np.asarray(lo, x.dtype))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi, x.dtype))
    return x


def _variadic(fn):
    def op(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return op


def _mean(*xs):
    return (_variadic(np.add)(*xs) / len(xs)).astype(xs[0].dtype, copy=False)


def _cast(x, *, to, saturate=1, round_mode="up"):
    return x.astype(onnx_dtype(to, "Cast"))


def _cast_like(x, like, *, saturate=1, round_mode="up"):
    return x.astype(like.dtype)


def _identity(x):
    return x


def _dropout(x, ratio=None, training_mode=None, *, seed=0):
    return x, np.ones(x.shape, dtype=bool)


def _constant(*, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
              value_string=None, value_strings=None, sparse_value=None):
    if value is not None:
        return value
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float32)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(value_ints, dtype=np.int64)
    raise ModelError("Constant with a string or sparse value is not supported")


def _constant_of_shape(shape, *, value=None):
    v = np.zeros(1, np.float32) if value is None else value.reshape(-1)
    return np.full(_ints(shape), v[0], dtype=v.dtype)


def _shape(x, *, start=0, end=None):
    return np.array(x.shape[slice(start, end)], dtype=np.int64)


def _size(x):
    return np.array(x.size, dtype=np.int64)


def _reshape(x, shape, *, allowzero=0):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(x, *, axis=1):
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))


def _transpose(x, *, perm=None):
    return np.transpose(x, perm if perm else None)


def _unsqueeze(x, axes_in=None, *, axes=None):
    axes = _ints(axes_in) if axes_in is not None else list(axes)
    return x.reshape(_unsqueezed_shape(x.shape, axes))


def _unsqueezed_shape(shape, axes) -> list[int]:
    rank = len(shape) + len(axes)
    axes = sorted(_norm_axes(axes, rank))
    out, src = [], iter(shape)
    for i in range(rank):
        out.append(1 if i in axes else next(src))
    return out


def _squeeze(x, axes_in=None, *, axes=None):
    axes = _ints(axes_in) if axes_in is not None else axes
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=_norm_axes(axes, x.ndim))


def _expand(x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape))))


def _tile(x, repeats):
    return np.tile(x, _ints(repeats))


def _concat(*xs, axis):
    return np.concatenate([x for x in xs if x is not None], axis=axis)


def _split(x, split_in=None, *, axis=0, split=None, num_outputs=None, n_outputs):
    sizes = _ints(split_in) if split_in is not None else split
    dim = x.shape[axis]
    if not sizes:
        n = num_outputs or n_outputs
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _slice_index(shape, starts, ends, axes, steps) -> tuple:
    """The Python index for ONNX Slice: negative bounds count from the end, then clamp per step sign."""
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else list(_norm_axes(axes, rank))
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = shape[axis]
        if step == 0:
            raise ModelError("Slice step 0")
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = slice(start, None if end < 0 else end, step)
    return tuple(index)


def _slice(x, starts_in=None, ends_in=None, axes_in=None, steps_in=None, *, starts=None, ends=None, axes=None):
    if starts_in is not None:  # opset >= 10: bounds are inputs
        starts, ends = _ints(starts_in), _ints(ends_in)
        axes = _ints(axes_in) if axes_in is not None else None
        steps = _ints(steps_in) if steps_in is not None else None
    else:
        steps = None
    return x[_slice_index(x.shape, starts, ends, axes, steps)]


def _gather(x, indices, *, axis=0):
    return np.take(x, indices, axis=axis)


def _where(cond, a, b):
    return np.where(cond, a, b)


def _range(start, limit, delta):
    return np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(x, pads_in=None, value=None, axes_in=None, *, mode="constant", pads=None, value_attr=None):
    pads = _ints(pads_in) if pads_in is not None else list(pads)
    axes = _norm_axes(_ints(axes_in), x.ndim) if axes_in is not None else tuple(range(x.ndim))
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + len(axes)])
    if any(b < 0 or e < 0 for b, e in width):
        raise ModelError("Pad with negative pads is not supported")
    if mode == "constant":
        if value is None or value.size == 0:
            fill = value_attr or 0
        else:
            fill = value.reshape(-1)[0]
        return np.pad(x, width, mode="constant", constant_values=fill)
    return np.pad(x, width, mode=_PAD_MODES[mode])


# ---------------------------------------------------------------------------------------
# reductions and normalizations
# ---------------------------------------------------------------------------------------
def _reduce(fn, post=None):
    """Build a Reduce* op; axes come from the input (opset 13+/18+) or the attribute (older)."""
    def op(x, axes_in=None, *, axes=None, keepdims=1, noop_with_empty_axes=0):
        ax = _ints(axes_in) if axes_in is not None else axes
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = range(x.ndim)
        ax = _norm_axes(ax, x.ndim)
        (xa,) = _in_acc(x)
        y = fn(xa, axis=ax, keepdims=bool(keepdims))
        if post is not None:
            y = post(y)
        return np.asarray(y).astype(x.dtype, copy=False)
    return op


def _sum_square(x, axis, keepdims):
    return np.sum(x * x, axis=axis, keepdims=keepdims)


def _l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims)


def _log_sum_exp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    y = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axis)


def _arg(fn):
    def op(x, *, axis=0, keepdims=1, select_last_index=0):
        if select_last_index:
            flipped = np.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - fn(flipped, axis=axis)
        else:
            idx = fn(x, axis=axis)
        idx = idx.astype(np.int64)
        return np.expand_dims(idx, axis) if keepdims else idx
    return op


def _softmax_last(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _softmax(x, *, axis=None, opset):
    (xa,) = _in_acc(x)
    if opset >= 13:
        y = _softmax_last(xa, -1 if axis is None else axis)
    else:  # opset < 13: coerce to 2-D at `axis` (default 1)
        axis = 1 if axis is None else axis
        flat = xa.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        y = _softmax_last(flat, 1).reshape(x.shape)
    return y.astype(x.dtype, copy=False)


def _log_softmax(x, *, axis=None, opset):
    (xa,) = _in_acc(x)
    if opset >= 13:
        ax = -1 if axis is None else axis
        s = xa - np.max(xa, axis=ax, keepdims=True)
        y = s - np.log(np.sum(np.exp(s), axis=ax, keepdims=True))
    else:
        axis = 1 if axis is None else axis
        flat = xa.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        s = flat - flat.max(axis=1, keepdims=True)
        y = (s - np.log(np.exp(s).sum(axis=1, keepdims=True))).reshape(x.shape)
    return y.astype(x.dtype, copy=False)


def _layer_norm(x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis + x.ndim if axis < 0 else axis
    axes = tuple(range(axis, x.ndim))
    (xa,) = _in_acc(x)
    mean = np.mean(xa, axis=axes, keepdims=True)
    centered = xa - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + epsilon)
    y = centered * inv_std * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype, copy=False), mean, inv_std


def _batch_norm(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    (xa,) = _in_acc(x)
    inv = (scale / np.sqrt(var + epsilon)).reshape(shape)
    y = (xa - mean.reshape(shape)) * inv + bias.reshape(shape)
    return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------
# MatMul, Gemm, Conv (float and integer)
# ---------------------------------------------------------------------------------------
def _matmul(a, b):
    if a.dtype == np.float16:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
    return np.matmul(a, b)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803 - ONNX names
    a2 = a.T if transA else a
    b2 = b.T if transB else b
    aa, ba = _in_acc(a2, b2)
    y = aa @ ba
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    if c is not None:
        y = y + (c if beta == 1.0 else c * np.asarray(beta, c.dtype))
    return y.astype(a.dtype, copy=False)


def _conv_geometry(in_shape, k_shape, auto_pad, pads, strides, dilations):
    """Per-spatial-dim (pad_begin, pad_end) and output size, following ONNX Conv's rules."""
    n = len(k_shape)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for i in range(n):
            out = -(-in_shape[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k_shape[i] - 1) * dilations[i] + 1 - in_shape[i])
            small, large = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID" or not pads:
        pads = [0] * (2 * n)
    outs = [(in_shape[i] + pads[i] + pads[i + n] - dilations[i] * (k_shape[i] - 1) - 1) // strides[i] + 1
            for i in range(n)]
    return pads, strides, dilations, outs


def _im2col(x, k_shape, auto_pad, pads, strides, dilations):
    """(N, C, *spatial) -> columns (N, C*prod(k), prod(out)) and the output spatial shape."""
    n_sp = x.ndim - 2
    pads, strides, dilations, outs = _conv_geometry(x.shape[2:], k_shape, auto_pad, pads, strides, dilations)
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n_sp]) for i in range(n_sp)])
    s = x.strides
    view = np.lib.stride_tricks.as_strided(
        x,
        shape=(x.shape[0], x.shape[1], *k_shape, *outs),
        strides=(s[0], s[1], *(s[2 + i] * dilations[i] for i in range(n_sp)),
                 *(s[2 + i] * strides[i] for i in range(n_sp))),
        writeable=False)
    cols = view.reshape(x.shape[0], x.shape[1] * int(np.prod(k_shape)), int(np.prod(outs)))
    return cols, outs


def _conv_core(x, w, group, auto_pad, pads, strides, dilations, kernel_shape):
    """Convolution as im2col + one (batched over groups) matmul; x and w already in compute dtype."""
    if x.ndim < 3:
        raise ModelError(f"Conv input of rank {x.ndim}")
    k_shape = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    cols, outs = _im2col(x, k_shape, auto_pad, pads, strides, dilations)
    n, m = x.shape[0], w.shape[0]
    if group == 1:
        y = np.matmul(w.reshape(m, -1), cols)
    else:
        cols = cols.reshape(n, group, -1, cols.shape[-1])
        y = np.matmul(w.reshape(group, m // group, -1), cols).reshape(n, m, -1)
    return y.reshape(n, m, *outs)


def _conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
          strides=None):
    xa, wa = _in_acc(x, w)
    y = _conv_core(xa, wa, group, auto_pad, pads, strides, dilations, kernel_shape)
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * (y.ndim - 2)))
    return y.astype(x.dtype, copy=False)


def _centered(q: np.ndarray, zp, axis_shape=None) -> np.ndarray:
    """q - zero_point as exact float64, the form integer matmuls/convs are computed in."""
    out = q.astype(np.float64)
    if zp is not None:
        zp = np.asarray(zp).astype(np.float64)
        out -= zp if axis_shape is None else zp.reshape(axis_shape)
    return out


def _exact_int32(y: np.ndarray) -> np.ndarray:
    """float64 results of integer products are exact; bring them back to int32 accumulators."""
    return np.rint(y).astype(np.int32)


def _row_zp_shape(zp) -> tuple | None:
    """MatMulInteger allows a per-row zero point for A: [M] (2-D A) or [..., M, 1]; B's [N] broadcasts as is."""
    if zp is None or np.ndim(zp) == 0 or np.size(zp) == 1:
        return None
    return tuple(np.shape(zp)) + (1,) if np.ndim(zp) == 1 else tuple(np.shape(zp))


def _matmul_integer(a, b, a_zp=None, b_zp=None):
    return _exact_int32(np.matmul(_centered(a, a_zp, _row_zp_shape(a_zp)), _centered(b, b_zp)))


def _w_zp_shape(w: np.ndarray, zp) -> tuple | None:
    """Per-output-channel weight zero points broadcast over (M, C, k...)."""
    if zp is None or np.size(zp) == 1:
        return None
    return (w.shape[0],) + (1,) * (w.ndim - 1)


def _conv_integer(x, w, x_zp=None, w_zp=None, *, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, pads=None, strides=None):
    xc = _centered(x, None if x_zp is None else np.asarray(x_zp).reshape(-1)[0])
    wc = _centered(w, w_zp, _w_zp_shape(w, w_zp))
    # Padding with 0 after centering == padding with the zero point before, as the spec requires.
    return _exact_int32(_conv_core(xc, wc, group, auto_pad, pads, strides, dilations, kernel_shape))


def _requantize(acc: np.ndarray, multiplier: np.ndarray, zp, dtype: np.dtype) -> np.ndarray:
    """ORT's MlasRequantizeOutput: float32(acc) * multiplier, round half to even, + zero point, saturate."""
    y = np.rint(acc.astype(np.float32) * multiplier)
    if zp is not None:
        y = y + zp.astype(np.float32)
    return _saturate(y, dtype)


def _out_dtype(zp, fallback: np.ndarray) -> np.dtype:
    return zp.dtype if zp is not None else fallback.dtype


def _qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp=None):
    return _requantize_product(_matmul_integer(a, b, a_zp, b_zp), a_scale, b_scale, y_scale, y_zp, a)


def _requantize_product(acc, a_scale, b_scale, y_scale, y_zp, a):
    """QLinearMatMul's output from its int32 accumulator (also used by int8_avx2's emulated accumulator)."""
    mult = (a_scale.astype(np.float32) * b_scale.astype(np.float32)) / y_scale.astype(np.float32)
    return _requantize(acc, mult, y_zp, _out_dtype(y_zp, a))


def _qlinear_conv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp=None, b=None, *, auto_pad="NOTSET",
                  dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    acc = _conv_integer(x, w, x_zp, w_zp, auto_pad=auto_pad, dilations=dilations, group=group,
                        kernel_shape=kernel_shape, pads=pads, strides=strides)
    if b is not None:
        acc = acc + b.astype(np.int32).reshape(1, -1, *([1] * (acc.ndim - 2)))
    mult = x_scale.astype(np.float32) * w_scale.astype(np.float32) / y_scale.astype(np.float32)
    mult = _per_axis(mult.reshape(-1), acc.ndim, 1)
    return _requantize(acc, mult, y_zp, _out_dtype(y_zp, x))


def _quantize_linear(x, scale, zp=None, *, axis=1, saturate=1, block_size=0, output_dtype=0, precision=0):
    dtype = zp.dtype if zp is not None else (onnx_dtype(output_dtype, "QuantizeLinear") if output_dtype
                                             else np.dtype(np.uint8))
    if not np.issubdtype(dtype, np.integer):
        raise ModelError(f"QuantizeLinear to {dtype} is not supported")
    s = _per_axis(scale, x.ndim, axis).astype(np.float32)
    y = np.rint(x.astype(np.float32) / s)  # round before adding the zero point, like ONNX
    if zp is not None:
        y = y + _per_axis(zp, x.ndim, axis).astype(np.float32)
    return _saturate(y, dtype)


def _dequantize_linear(x, scale, zp=None, *, axis=1, block_size=0, output_dtype=0):
    d = x.astype(np.int64)
    if zp is not None:
        d = d - _per_axis(zp, x.ndim, axis).astype(np.int64)
    out_dtype = onnx_dtype(output_dtype, "DequantizeLinear") if output_dtype else scale.dtype
    s = _per_axis(scale, x.ndim, axis).astype(np.float32)  # float32 math even for float16 scales, like ORT
    return (d.astype(np.float32) * s).astype(out_dtype, copy=False)


def _dynamic_quantize_linear(x):
    """uint8 quantization over the tensor's range (widened to include 0), as ORT computes it."""
    xf = x.astype(np.float32, copy=False)
    lo = np.float32(min(0.0, float(xf.min()))) if xf.size else np.float32(0)
    hi = np.float32(max(0.0, float(xf.max()))) if xf.size else np.float32(0)
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zp = np.float32(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))
    y = _saturate(np.rint(xf / scale) + zp, np.dtype(np.uint8))
    return y, np.array(scale, dtype=x.dtype), np.array(zp, dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# the op table
# ---------------------------------------------------------------------------------------
def _unary(fn):
    """Wrap a NumPy ufunc so its signature is introspectable (attributes are checked against it)."""
    def op(x):
        return fn(x)
    return op


def _binary(fn):
    def op(a, b):
        return fn(a, b)
    return op


OPS: dict[str, Callable[..., Any]] = {
    # elementwise arithmetic (ONNX requires equal input dtypes, so NumPy's result dtype is ONNX's)
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _div, "Pow": _pow,
    "Neg": _unary(np.negative), "Abs": _unary(np.abs), "Sqrt": _unary(np.sqrt), "Exp": _unary(np.exp),
    "Log": _unary(np.log), "Reciprocal": _unary(np.reciprocal), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Round": _unary(np.rint), "Sign": _unary(np.sign),
    "Tanh": _unary(np.tanh), "Sigmoid": _sigmoid, "Erf": _erf, "Relu": _relu, "LeakyRelu": _leaky_relu,
    "Gelu": _gelu, "Clip": _clip,
    "Max": _variadic(np.maximum), "Min": _variadic(np.minimum), "Sum": _variadic(np.add), "Mean": _mean,
    # comparisons and logic
    "Equal": _binary(np.equal), "Less": _binary(np.less), "Greater": _binary(np.greater),
    "LessOrEqual": _binary(np.less_equal), "GreaterOrEqual": _binary(np.greater_equal),
    "Not": _unary(np.logical_not), "And": _binary(np.logical_and), "Or": _binary(np.logical_or),
    "Xor": _binary(np.logical_xor), "Where": _where,
    # types, constants and shapes
    "Cast": _cast, "CastLike": _cast_like, "Identity": _identity, "Dropout": _dropout,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Shape": _shape, "Size": _size,
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Expand": _expand, "Tile": _tile, "Concat": _concat, "Split": _split,
    "Slice": _slice, "Gather": _gather, "Range": _range, "Pad": _pad,
    # reductions and normalization
    "ReduceSum": _reduce(np.sum), "ReduceMean": _reduce(np.mean), "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min), "ReduceProd": _reduce(np.prod), "ReduceSumSquare": _reduce(_sum_square),
    "ReduceL1": _reduce(_l1), "ReduceL2": _reduce(_sum_square, np.sqrt), "ReduceLogSumExp": _reduce(_log_sum_exp),
    "ArgMax": _arg(np.argmax), "ArgMin": _arg(np.argmin),
    "Softmax": _softmax, "LogSoftmax": _log_softmax, "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    # linear algebra
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv,
    # quantization
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
    "DynamicQuantizeLinear": _dynamic_quantize_linear, "MatMulInteger": _matmul_integer,
    "ConvInteger": _conv_integer, "QLinearMatMul": _qlinear_matmul, "QLinearConv": _qlinear_conv,
}

# Load-time checks for attribute values an op function cannot honour.
_CONV_PADS = {"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"}
CHECKS: dict[str, Callable[[dict], str | None]] = {
    "Conv": lambda a: None if a.get("auto_pad", "NOTSET") in _CONV_PADS else f"auto_pad={a['auto_pad']}",
    "QuantizeLinear": lambda a: "blocked quantization" if a.get("block_size") else None,
    "DequantizeLinear": lambda a: "blocked quantization" if a.get("block_size") else None,
    "BatchNormalization": lambda a: "training_mode=1" if a.get("training_mode") else None,
    "Pad": lambda a: None if a.get("mode", "constant") in _PAD_MODES else f"mode={a['mode']}",
    "Cast": lambda a: None if a.get("to") in DTYPES else f"Cast to {DTYPE_NAMES.get(a.get('to'), a.get('to'))}",
}
CHECKS["ConvInteger"] = CHECKS["QLinearConv"] = CHECKS["Conv"]
