"""Relax graph passes of the compile pipeline's `graph` phase (aot/lower/pipeline.py), each one a rewrite with a reason:
token gathers that cannot read out of bounds, GELU and sigmoid in forms FastMath vectorizes, softmax along the
last axis and matmul widths in whole vectors (the shapes the CPU rules schedule), int8 weights kept int8 by
fusing their widening into the consumer, and int8 conv weights folded to fp32 where the conv computes fp32.
The int8 matmul and conv kernels have their own module (int8_kernels.py)."""
from __future__ import annotations

import numpy as np


def bound(mutator, e):
    """What a dataflow variable is bound to in `mutator` (a PyExprMutator), through chains of variables;
    e itself when it is not a bound variable."""
    from tvm import relax
    while isinstance(e, relax.Var) and mutator.lookup_binding(e) is not None:
        e = mutator.lookup_binding(e)
    return e


def call_rewrite_pass(name: str, rewrite):
    """A module pass that replaces every Relax call `c` by `rewrite(c, bound)` (which returns c to keep it;
    bound(v) is the expression a variable is bound to)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            return rewrite(super().visit_call_(call), lambda e: bound(self, e))

    @tvm.transform.module_pass(opt_level=0, name=name)
    def apply(mod, _ctx):
        for gv, f in list(mod.functions_items()):
            if isinstance(f, relax.Function):
                mod[gv] = Rewrite().visit_expr(f)
        return mod
    return apply


def bounded_gather_pass():
    """Gathers with run-time indices (token embeddings) use take(mode="clip"): the importer's
    "fast" mode reads out of bounds (a segfault) on an out-of-range id; clip costs one min/max."""
    import tvm
    from tvm import relax
    take = tvm.ir.Op.get("relax.take")

    def clip(call, _bound):
        if call.op.same_as(take) and call.attrs.mode == "fast" and not isinstance(call.args[1], tvm.ir.Constant):
            return relax.op.take(call.args[0], call.args[1], axis=call.attrs.axis, mode="clip")
        return call
    return call_rewrite_pass("BoundedGather", clip)


def erf_gelu_pass():
    """nn.gelu (one ONNX Gelu node, opset 20) becomes x * (0.5 + 0.5 * erf(x / sqrt2)), so that FastMath
    turns its erf into the vectorizable fast_erf: legalized as one op, gelu calls scalar libm erff per
    element, which made the whole model 1.8x slower (BENCHMARKS.md)."""
    import tvm
    from tvm import relax
    gelu = tvm.ir.Op.get("relax.nn.gelu")

    def decompose(call, _bound):
        if not call.op.same_as(gelu):
            return call
        x = call.args[0]
        dtype = str(x.ty.dtype)
        c = lambda v: relax.const(v, dtype)
        return relax.op.multiply(x, relax.op.add(c(0.5), relax.op.multiply(
            relax.op.erf(relax.op.multiply(x, c(0.5 ** 0.5))), c(0.5))))
    return call_rewrite_pass("ErfGelu", decompose)


def sigmoid_exp_pass():
    """sigmoid(x) -> 1 / (1 + exp(-x)), so that FastMath turns the exp into the vectorizable fast_exp:
    legalized as one op, sigmoid lowers to a scalar libm expf call per element (173 call sites in YOLOv8n,
    whose SiLU follows every conv)."""
    import tvm
    from tvm import relax
    sigmoid = tvm.ir.Op.get("relax.sigmoid")

    def expand(call, _bound):
        if not call.op.same_as(sigmoid):
            return call
        x = call.args[0]
        one = relax.const(1.0, str(x.ty.dtype))
        return relax.op.divide(one, relax.op.add(one, relax.op.exp(relax.op.negative(x))))
    return call_rewrite_pass("SigmoidExp", expand)


def softmax_last_axis_pass():
    """softmax over an inner axis -> transpose it last, softmax, transpose back. The CPU rules compute a
    softmax row by row along the last axis; over an inner one (YOLOv8's distribution head: 16 bins on axis
    1 of [1, 16, 4, 2100]) they recomputed the row max and sum for every element (measured 2.9 ms; the
    transposes fuse into the kernels around it)."""
    import tvm
    from tvm import relax
    softmax = tvm.ir.Op.get("relax.nn.softmax")

    def move_last(call, _bound):
        if not call.op.same_as(softmax):
            return call
        x = call.args[0]
        nd = x.ty.ndim
        if nd < 2 or int(call.attrs.axis) % nd == nd - 1:
            return call
        axis = int(call.attrs.axis) % nd
        perm = [d for d in range(nd) if d != axis] + [axis]
        back = [perm.index(d) for d in range(nd)]
        y = relax.op.nn.softmax(relax.op.permute_dims(x, perm), axis=-1)
        return relax.op.permute_dims(y, back)
    return call_rewrite_pass("SoftmaxLastAxis", move_last)


def pad_matmul_columns_pass(lanes: int = 8, multiple: int = 16, stats: dict | None = None):
    """matmul(x, W: float32 constant [K, N]) with N not a multiple of `lanes` -> matmul with W zero-padded to
    a multiple of `multiple`, then the first N columns (a slice fused into what follows); likewise a conv1d /
    conv2d (groups 1) whose float32 constant weight has O output channels, not a multiple of `lanes`: O
    padded with zero filters, the output's channels sliced back. The CPU rules' register tile needs the
    vector axis in whole vectors; without them the OCR recognizer's 6,625-class matmul ran unscheduled (24 ms
    of the model's 47), and silero-vad's STFT conv1d (258 channels) 170 us of its 182. Costs the padding's
    bytes (at most multiple - 1 columns or filters). `stats` counts what was padded ({"matmuls": n, "convs": n})."""
    import tvm
    from tvm import relax
    matmul = tvm.ir.Op.get("relax.matmul")
    convs = (tvm.ir.Op.get("relax.nn.conv1d"), tvm.ir.Op.get("relax.nn.conv2d"))

    def padded(n: int) -> int:
        return -(-n // multiple) * multiple

    def count(kind: str) -> None:
        if stats is not None:
            stats[kind] = stats.get(kind, 0) + 1

    def pad(call, bound):
        is_conv = any(call.op.same_as(c) for c in convs)
        if not (call.op.same_as(matmul) or is_conv):
            return call
        w = bound(call.args[1])
        if not isinstance(w, tvm.ir.Constant) or str(w.ty.dtype) != "float32":
            return call
        wv = w.value.numpy()
        if is_conv:
            a = call.attrs
            if int(a.groups) != 1 or str(a.kernel_layout)[0] != "O":
                return call
            axis, out_axis = 0, str(a.out_layout or a.data_layout).index("C")   # O of OI[W|HW]; C of the output
        elif wv.ndim == 2:
            axis, out_axis = 1, call.args[0].ty.ndim - 1                          # N of [K, N]; y's last axis
        else:
            return call
        n = wv.shape[axis]
        if n % lanes == 0 or n < multiple:
            return call
        widths = [(0, 0)] * wv.ndim
        widths[axis] = (0, padded(n) - n)
        wp = relax.const(np.pad(wv, widths))
        if is_conv:
            y = relax.Call(call.op, [call.args[0], wp], call.attrs)
        else:
            y = relax.op.matmul(call.args[0], wp, out_dtype=call.attrs.out_dtype)
        count("convs" if is_conv else "matmuls")
        return relax.op.strided_slice(y, axes=[out_axis], begin=[0], end=[n])
    return call_rewrite_pass("PadMatmulColumns", pad)


def conv_weights_fp32_pass():
    """conv2d(x, dequantize(W: int8 constant, s, zp)) -> conv2d(x, fp32 constant): on CPU targets a
    conv computes in float32 either way (the activations of a QDQ conv are fake-quantized), and with
    the dequantize fused in, the conv kept neither its layout-rewritten weight nor its bias/GELU epilogue
    (measured: the stem's convs 1.27x their fp32 time). Costs 3 bytes per conv weight. Runs after
    int8_matmul_pass, which turns the QDQ convs it can into integer convs; this takes the rest."""
    import tvm
    from tvm import relax
    conv, deq = tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.dequantize")

    def fold(call, bound):
        dq = bound(call.args[1]) if call.op.same_as(conv) else None
        if not (isinstance(dq, relax.Call) and dq.op.same_as(deq)):
            return call
        w, s, z = (bound(a) for a in dq.args)
        if not all(isinstance(e, tvm.ir.Constant) for e in (w, s, z)):
            return call
        w, s, z = (e.value.numpy() for e in (w, s, z))
        shape = [1] * w.ndim
        shape[int(dq.attrs.axis) % w.ndim] = -1
        s, z = (v.reshape(shape) if v.ndim else v for v in (s, z))
        wf = (w.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s.astype(np.float32)
        return relax.op.nn.conv2d(call.args[0], relax.const(wf), **_conv_attrs(call.attrs))
    return call_rewrite_pass("ConvWeightsFp32", fold)


def _conv_attrs(a) -> dict:
    return {"strides": a.strides, "padding": a.padding, "dilation": a.dilation, "groups": a.groups,
            "data_layout": a.data_layout, "kernel_layout": a.kernel_layout, "out_layout": a.out_layout,
            "out_dtype": a.out_dtype}


def fuse_dequantize_pass():
    """int8 weights stay int8 in the artifact: the widening or dequantizing of each int8 weight
    constant (`dequantize(W)` from QDQ graphs, `astype(W, int32) [- zero_point]` from MatMulInteger)
    is fused into the matmul/conv that consumes it, so the kernel reads int8 and widens in registers,
    and no constant folding can turn the weight back into a 4-byte-per-element constant."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard
    w = is_const()
    deq = is_op("relax.dequantize")(w, wildcard(), wildcard())
    widen = is_op("relax.astype")(w)
    widen_zp = is_op("relax.subtract")(widen, wildcard())
    weights = {"dq": deq, "dq_t": is_op("relax.permute_dims")(deq), "i32": widen, "i32_zp": widen_zp}
    pats = []
    for name, op in (("matmul", "relax.matmul"), ("conv2d", "relax.nn.conv2d")):
        for wname, wp in weights.items():
            pats.append((f"edge_slim.{wname}_{name}", is_op(op)(wildcard(), wp)))
    return relax.transform.FuseOpsByPattern(pats, bind_constants=False, annotate_codegen=False)
