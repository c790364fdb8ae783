"""Integer kernels for the int8 matmuls of compiled artifacts: each target's dot-product instruction, exact.

The shipped int8 form (dynamic int8, ONNX `MatMulInteger`) multiplies uint8 activations, with a per-tensor zero
point `zp` computed at run time, by constant int8 weights (symmetric: zero point 0). TVM's importer widens
both operands to int32 and multiplies with `vpmulld` / `mul`, which made int8 artifacts slower than fp32.
`int8_matmul_pass` replaces every such matmul with one hand-scheduled kernel (a register tile of RB rows x
JB column vectors, the reduction innermost, tiles in parallel) built around the target's integer
dot-product instruction, named by the target profile's `int8_kernel` (targets/*.toml):

    kernel            activation operand           instruction                    products / instruction
    x86-avx2-madd     int16 a - zp                 vpmaddwd ymm (AVX2)            16
    x86-avx512-madd   int16 a - zp                 vpmaddwd zmm (AVX-512 BW)      32
    x86-vnni          uint8 a, - zp * colsum(W)    vpdpbusd zmm (AVX-512 VNNI)    64
    arm-sdot          int8 a - 128, + (128 - zp) * colsum(W)   sdot (ARMv8.2 dotprod)  16
    arm-neon-widen    int8 a - 128, as arm-sdot    smull + saddlp + addp (ARMv8.0) 16 per 4 instructions

All are exact integer math, never a saturating form: |a - zp| <= 255 and |w| <= 128, so vpmaddwd's pair of
products (at most 65,280) fits its int32 lanes; vpdpbusd and sdot add four 8-bit products into int32 without
saturation; smull's int8 x int8 products (|p| <= 16,384) fit int16 and saddlp widens their pairs to int32;
the zero-point corrections use colsum(W) (sum over k of each column), computed at compile time.
ONNX Runtime's AVX2 kernels, by contrast, use vpmaddubsw, which saturates (int8_arith.py).

QDQ convs (a uint8 activation with constant scale and zero point, int8 weights) run on the same kernels:
an im2col kernel writes the NHWC patch matrix in the kernel's operand type, then one float multiply per
channel dequantizes the exact sums.

Weights are packed once, at compile time, as [N/L, K/G, L, G] (L int32 lanes per vector, G products per
lane), zero-padded to whole vectors, and stay int8 in the library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...targets import INT8_KERNELS


@dataclass(frozen=True)
class Kernel:
    """One integer matmul kernel: vector shape, operand types, and how one step of the reduction is written."""
    name: str
    lanes: int                 # int32 accumulators per vector (L)
    group: int                 # products added into one lane per instruction (G)
    col_blocks: int            # vectors per register tile (JB)
    act_dtype: str             # the activation operand as the kernel reads it
    act_offset: int | None     # a - act_offset is that operand (None: a - zp)
    instruction: str           # the mnemonic tests look for in the disassembly
    step: Callable             # (acc, A group as int32 or int16, B vector load) -> new acc

    @property
    def corrected(self) -> bool:
        """Whether the kernel adds (act_offset - zp) * colsum(W) to its sums (the operand is not a - zp)."""
        return self.act_offset is not None


def _madd(lanes: int, intrin: str):
    from tvm.script import tirx as T

    def step(acc, a_pair, b):  # a_pair: int32 holding two int16; b: int8 x 2*lanes
        return acc + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(intrin),
            T.reinterpret(T.broadcast(a_pair, lanes), dtype=f"int16x{2 * lanes}"),
            T.Cast(f"int16x{2 * lanes}", b), dtype=f"int32x{lanes}")
    return step


def _vnni(acc, a_quad, b):
    from tvm.script import tirx as T
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), acc,
                                   T.reinterpret(T.broadcast(a_quad, 16), dtype="int8x64"), b, dtype="int32x16")


def _sdot(acc, a_quad, b):
    from tvm.script import tirx as T
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), acc,
                                   b, T.reinterpret(T.broadcast(a_quad, 4), dtype="int8x16"), dtype="int32x4")


def _neon_widen(acc, a_quad, b):
    """ARMv8.0 (Pi 4): four int8 x int8 products per lane without sdot: smull to int16 (|p| <= 16,384),
    pairwise widening add to int32 (saddlp), and a pairwise add (addp) of the two halves."""
    from tvm.script import tirx as T

    def intrin(name, *args, dtype):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(f"llvm.aarch64.neon.{name}"), *args, dtype=dtype)
    a = T.reinterpret(T.broadcast(a_quad, 2), dtype="int8x8")    # a0..a3 a0..a3
    lo = intrin("saddlp.v4i32.v8i16", intrin("smull.v8i16", a, T.vectorlow(b, dtype="int8x8"), dtype="int16x8"),
                dtype="int32x4")
    hi = intrin("saddlp.v4i32.v8i16", intrin("smull.v8i16", a, T.vectorhigh(b, dtype="int8x8"), dtype="int16x8"),
                dtype="int32x4")
    return acc + intrin("addp.v4i32", lo, hi, dtype="int32x4")


def kernels() -> dict[str, Kernel]:
    return {k.name: k for k in (
        Kernel("x86-avx2-madd", 8, 2, 2, "int16", None, "vpmaddwd", _madd(8, "llvm.x86.avx2.pmadd.wd")),
        Kernel("x86-avx512-madd", 16, 2, 2, "int16", None, "vpmaddwd", _madd(16, "llvm.x86.avx512.pmaddw.d.512")),
        Kernel("x86-vnni", 16, 4, 2, "uint8", 0, "vpdpbusd", _vnni),
        Kernel("arm-sdot", 4, 4, 4, "int8", 128, "sdot", _sdot),
        Kernel("arm-neon-widen", 4, 4, 2, "int8", 128, "smull", _neon_widen),
    )}


PARALLEL_MACS = 1 << 17
MARK = "edge_slim.int8_kernel"    # PrimFunc attribute naming the kernel
KERNEL_NAMES = INT8_KERNELS      # the names target profiles may give (validated by targets.py)


def padded_n(kernel: Kernel, n: int) -> int:
    tile = kernel.lanes * kernel.col_blocks
    return -(-n // tile) * tile


def pack_weight(kernel: Kernel, w: np.ndarray) -> np.ndarray:
    """[K, N] int8 -> flat [NP/L, K/G, L, G] int8 (NP: N padded to whole register tiles, zeros)."""
    k, n = w.shape
    L, G = kernel.lanes, kernel.group
    npad = padded_n(kernel, n)
    wp = np.zeros((k, npad), np.int8)
    wp[:, :n] = w
    return np.ascontiguousarray(wp.reshape(k // G, G, npad // L, L).transpose(2, 0, 3, 1)).reshape(-1)


def column_sums(kernel: Kernel, w: np.ndarray) -> np.ndarray:
    s = np.zeros(padded_n(kernel, w.shape[1]), np.int32)
    s[:w.shape[1]] = w.astype(np.int32).sum(axis=0)
    return s


def reference(a: np.ndarray, zp: int, w: np.ndarray) -> np.ndarray:
    """Exact int32 math: (a - zp) @ w, the oracle every kernel must equal."""
    return (a.astype(np.int64) - int(zp)) @ w.astype(np.int64)


def prim_func(kernel: Kernel, m: int, k: int, n: int):
    """The kernel for [m, k] activations (the kernel's operand type) times a [k, n] int8 weight -> [m, n] int32."""
    from tvm.script import tirx as T
    L, G, JB = kernel.lanes, kernel.group, kernel.col_blocks
    RB = next(d for d in (4, 3, 2, 1) if m % d == 0)
    NP = padded_n(kernel, n)
    NJ, MB, KG = NP // (L * JB), m // RB, k // G
    a_vec = f"{kernel.act_dtype}x{G}" if G > 1 else kernel.act_dtype
    a_word = "int32" if G * np.dtype(kernel.act_dtype).itemsize == 4 else None   # the group as one int32
    step = kernel.step
    kname = kernel.name
    off, corrected = kernel.act_offset, kernel.corrected
    # a thread-pool launch costs more than a small matmul (measured: 7 us for 16x128x24 in parallel)
    tiles = T.parallel if m * k * NP >= PARALLEL_MACS else T.serial

    def group(A, row, kg):
        v = A[row, kg * G] if G == 1 else A.vload([row, kg * G], a_vec)
        return T.reinterpret(v, dtype=a_word) if a_word else v

    @T.macro
    def tiles_of(A, W, C, Z, S):  # Z, S: the zero point and colsum(W), read only by a corrected kernel
        with T.sblock("int8_matmul"):  # SplitLayoutRewritePreproc wants a block under root
            acc = T.sblock_alloc_buffer((RB * JB * L,), "int32", scope="local")
            for tile in tiles(MB * NJ):
                for r in T.unroll(RB):
                    for cb in T.unroll(JB):
                        acc[T.ramp((r * JB + cb) * L, 1, L)] = T.broadcast(T.int32(0), L)
                for kg in range(KG):
                    for cb in T.unroll(JB):
                        for r in T.unroll(RB):
                            acc[T.ramp((r * JB + cb) * L, 1, L)] = step(
                                acc[T.ramp((r * JB + cb) * L, 1, L)], group(A, (tile // NJ) * RB + r, kg),
                                W.vload([(((tile % NJ) * JB + cb) * KG + kg) * L * G], f"int8x{L * G}"))
                for r in T.unroll(RB):
                    for cb in T.unroll(JB):
                        for lane in T.vectorized(L):
                            if ((tile % NJ) * JB + cb) * L + lane < n:
                                if corrected:
                                    C[(tile // NJ) * RB + r, ((tile % NJ) * JB + cb) * L + lane] = \
                                        acc[(r * JB + cb) * L + lane] + \
                                        (off - T.Cast("int32", Z[()])) * S[((tile % NJ) * JB + cb) * L + lane]
                                else:
                                    C[(tile // NJ) * RB + r, ((tile % NJ) * JB + cb) * L + lane] = \
                                        acc[(r * JB + cb) * L + lane]

    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, MARK: kname}
    if not corrected:
        @T.prim_func(s_tir=True)
        def qmm(a: T.handle, w: T.handle, c: T.handle):
            T.func_attr(attrs)
            A = T.match_buffer(a, (m, k), kernel.act_dtype)
            W = T.match_buffer(w, (NP * k,), "int8")
            C = T.match_buffer(c, (m, n), "int32")
            with T.sblock("root"):
                tiles_of(A, W, C, None, None)
        return qmm

    @T.prim_func(s_tir=True)
    def qmm_corrected(a: T.handle, z: T.handle, w: T.handle, s: T.handle, c: T.handle):
        T.func_attr(attrs)
        A = T.match_buffer(a, (m, k), kernel.act_dtype)
        Z = T.match_buffer(z, (), "uint8")
        W = T.match_buffer(w, (NP * k,), "int8")
        S = T.match_buffer(s, (NP,), "int32")
        C = T.match_buffer(c, (m, n), "int32")
        with T.sblock("root"):
            tiles_of(A, W, C, Z, S)
    return qmm_corrected


def dynamic_quantize_func(n: int, lanes: int, act_dtype: str):
    """DynamicQuantizeLinear of a float32 tensor of n elements, in one kernel, straight to a matmul kernel's
    activation operand: scale = (max(0, max x) - min(0, min x)) / 255, zp = uint8(round(clip(-min(0, min x)
    / scale, 0, 255))), q = uint8(clip(round(x / scale) + zp, 0, 255)), and the operand is q (uint8), q - zp
    (int16) or q - 128 (int8). The same float32 operations in the same order as TVM's import of the op, so the values
    are identical. The import computes them with two full reductions, three scalar kernels and an
    elementwise one: six launches per quantized activation (44 in Tiny), which cost more than its
    int8 matmuls saved. -> (operand [n], scale [], zp [])."""
    from tvm.script import tirx as T
    NV, vec = n // lanes, f"float32x{lanes}"

    def operand(x, s, z):
        q = T.Cast("uint8", T.max(T.min(T.round(x / s) + T.Cast("float32", z), T.float32(255)), T.float32(0)))
        if act_dtype == "uint8":
            return q
        if act_dtype == "int8":   # q - 128: the signed operand of sdot / smull
            return T.Cast("int8", T.Cast("int16", q) - T.int16(128))
        return T.Cast("int16", q) - T.Cast("int16", z)

    @T.prim_func(s_tir=True)
    def dynamic_quantize(x: T.handle, a: T.handle, s: T.handle, z: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, MARK: "dynamic-quantize"})
        X = T.match_buffer(x, (n,), "float32")
        A = T.match_buffer(a, (n,), act_dtype)
        S = T.match_buffer(s, (), "float32")
        Z = T.match_buffer(z, (), "uint8")
        with T.sblock("root"):
            with T.sblock("dynamic_quantize"):
                hi = T.sblock_alloc_buffer((lanes,), "float32", scope="local")
                lo = T.sblock_alloc_buffer((lanes,), "float32", scope="local")
                r = T.sblock_alloc_buffer((2,), "float32", scope="local")
                zp = T.sblock_alloc_buffer((1,), "uint8", scope="local")
                hi[T.ramp(0, 1, lanes)] = T.broadcast(X[0], lanes)
                lo[T.ramp(0, 1, lanes)] = T.broadcast(X[0], lanes)
                for i in range(NV):
                    hi[T.ramp(0, 1, lanes)] = T.max(hi[T.ramp(0, 1, lanes)], X.vload([i * lanes], vec))
                    lo[T.ramp(0, 1, lanes)] = T.min(lo[T.ramp(0, 1, lanes)], X.vload([i * lanes], vec))
                r[0] = hi[0]
                r[1] = lo[0]
                for j in range(1, lanes):
                    r[0] = T.max(r[0], hi[j])
                    r[1] = T.min(r[1], lo[j])
                for t in range(NV * lanes, n):
                    r[0] = T.max(r[0], X[t])
                    r[1] = T.min(r[1], X[t])
                r[1] = T.min(T.float32(0), r[1])
                r[0] = (T.max(T.float32(0), r[0]) - r[1]) / T.float32(255)
                zp[0] = T.Cast("uint8", T.round(T.max(T.min(T.float32(0) - r[1] / r[0], T.float32(255)),
                                                      T.float32(0))))
                S[()] = r[0]
                Z[()] = zp[0]
                for i in range(NV):
                    for j in T.vectorized(lanes):
                        A[i * lanes + j] = operand(X[i * lanes + j], r[0], zp[0])
                for t in range(NV * lanes, n):
                    A[t] = operand(X[t], r[0], zp[0])
    return dynamic_quantize


def int8_matmul_pass(kernel_name: str, stats: dict | None = None):
    """A Relax module pass: every `matmul(astype(a: uint8) [- astype(zp)], astype(W: int8 constant) [- 0])` with
    int32 output (TVM's import of MatMulInteger, with or without A's zero point; a's leading axes are rows)
    becomes a call of the named kernel on the packed weight, and so does every QDQ conv2d (see `conv`)
    through im2col. Matmuls and convs of any other form (fp32, non-constant or asymmetric weights, K not a
    multiple of the kernel's group, a conv over a batch of more than one) are left as they are. Run DeadCodeElimination after it: the widened weights it no longer reads must not be
    folded into int32 constants. `stats`, when given, receives the counts (matmuls, quantize, convs)."""
    import tvm
    from tvm import relax

    from .graph_passes import bound
    kern = kernels()[kernel_name]
    matmul, astype, subtract, divide, maximum, minimum, rmax, rmin, rround, clip = (
        tvm.ir.Op.get(f"relax.{o}") for o in
        ("matmul", "astype", "subtract", "divide", "maximum", "minimum", "max", "min", "round", "clip"))
    quantize, dequantize, conv2d = (tvm.ir.Op.get(f"relax.{o}") for o in ("quantize", "dequantize", "nn.conv2d"))

    def is_const(e, v):
        return isinstance(e, tvm.ir.Constant) and e.ty.ndim == 0 and float(e.value.numpy()) == v

    def is_call(e, op):
        return isinstance(e, relax.Call) and e.op.same_as(op)

    def dtype_of(e):
        return str(e.ty.dtype)

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.prepared: dict = {}
            self.quantized: dict = {}   # x -> its dynamic_quantize call (operand, scale, zp)
            self.stats = {"matmuls": 0, "quantize": 0, "convs": 0}

        def value(self, e):
            return bound(self, e)

        def scale_source(self, call):
            """x when call = (maximum(0, max(x)) - minimum(0, min(x))) / 255: DynamicQuantizeLinear's scale."""
            if not (is_call(call, divide) and is_const(self.value(call.args[1]), 255.0)):
                return None
            d = self.value(call.args[0])
            if not is_call(d, subtract):
                return None
            hi, lo = self.value(d.args[0]), self.value(d.args[1])
            if not (is_call(hi, maximum) and is_call(lo, minimum) and is_const(self.value(hi.args[0]), 0.0)
                    and is_const(self.value(lo.args[0]), 0.0)):
                return None
            mx, mn = self.value(hi.args[1]), self.value(lo.args[1])
            if not (is_call(mx, rmax) and is_call(mn, rmin) and mx.attrs.axis is None and mn.attrs.axis is None
                    and mx.args[0].same_as(mn.args[0]) and dtype_of(mx.args[0]) == "float32"):
                return None
            return mx.args[0]

        def zp_source(self, call):
            """The dynamic_quantize call whose zero point `call` computes: astype(round(clip(0 - lo / scale)),
            uint8) with scale already rewritten to that call's output."""
            if not (is_call(call, astype) and call.attrs.dtype == "uint8"):
                return None
            r = self.value(call.args[0])
            c = self.value(r.args[0]) if is_call(r, rround) else None
            d = self.value(c.args[0]) if is_call(c, clip) else None
            q = self.value(d.args[1]) if is_call(d, subtract) and is_const(self.value(d.args[0]), 0.0) else None
            s = self.value(q.args[1]) if is_call(q, divide) else None
            return self.quantize_of(s, 1)

        def quantize_of(self, e, index):
            """The dynamic_quantize call when e is its output `index`, else None."""
            e = self.value(e)
            if isinstance(e, relax.TupleGetItem) and e.index == index and e.tuple_value in self.quantized.values():
                return e.tuple_value
            return None

        def dynamic_quantize(self, x):
            if x not in self.quantized:
                n = int(np.prod([int(d) for d in x.ty.shape.values]))
                f = dynamic_quantize_func(n, kern.lanes, kern.act_dtype).without_attr("global_symbol")
                gv = self.builder_.add_func(f, "dynamic_quantize")
                flat = self.builder_.emit(relax.op.reshape(x, (n,)))
                self.quantized[x] = self.builder_.emit(relax.call_tir(gv, [flat], [
                    relax.TensorType((n,), kern.act_dtype), relax.TensorType((), "float32"),
                    relax.TensorType((), "uint8")]))
                self.stats["quantize"] += 1
            return self.quantized[x]

        def activation(self, x):
            """(a: uint8 tensor, zp: uint8 scalar) when x = astype(a, int32) - astype(zp, int32)."""
            x = self.value(x)
            if is_call(x, astype) and dtype_of(x.args[0]) == "uint8":    # MatMulInteger without A's zero point
                return x.args[0], relax.const(np.uint8(0))
            if not is_call(x, subtract):
                return None
            a, z = (self.value(v) for v in x.args)
            if not (is_call(a, astype) and is_call(z, astype)):
                return None
            a, z = a.args[0], z.args[0]
            if dtype_of(a) != "uint8" or dtype_of(z) != "uint8" or z.ty.ndim != 0:
                return None
            return a, z

        def weight(self, w):
            """The int8 [K, N] constant when w = astype(W, int32) [- astype(0, int32)]."""
            w = self.value(w)
            if is_call(w, subtract):
                zero = self.value(w.args[1])
                zero = self.value(zero.args[0]) if is_call(zero, astype) else zero
                if not (isinstance(zero, tvm.ir.Constant) and not zero.value.numpy().any()):
                    return None
                w = self.value(w.args[0])
            if not is_call(w, astype):
                return None
            c = self.value(w.args[0])
            if not isinstance(c, tvm.ir.Constant) or dtype_of(c) != "int8" or c.ty.ndim != 2:
                return None
            return c.value.numpy()

        def visit_call_(self, call):
            try:
                out_dtype = dtype_of(call) if isinstance(call.ty, relax.TensorType) else None
            except AttributeError:  # not yet typed
                out_dtype = None
            call = super().visit_call_(call)
            x = self.scale_source(call)
            if x is not None:
                return relax.TupleGetItem(self.dynamic_quantize(x), 1)
            p = self.zp_source(call)
            if p is not None:
                return relax.TupleGetItem(p, 2)
            if is_call(call, conv2d):
                y = self.conv(call)
                return call if y is None else y
            if not is_call(call, matmul) or out_dtype != "int32":
                return call
            act, w = self.activation(call.args[0]), self.weight(call.args[1])
            if act is None or w is None:
                return call
            a, zp = act
            shape = [int(d) for d in a.ty.shape.values]
            if shape[-1] != w.shape[0] or shape[-1] % kern.group:     # [..., K] @ [K, N]: rows are rows
                return call
            m = int(np.prod(shape[:-1]))
            ap = self.prepare(a, zp, m)
            f = prim_func(kern, m, shape[-1], w.shape[1]).without_attr("global_symbol")
            gv = self.builder_.add_func(f, f"int8_matmul_{kern.name.replace('-', '_')}")
            args = [ap, relax.const(pack_weight(kern, w))]
            if kern.corrected:
                args = [ap, zp, args[1], relax.const(column_sums(kern, w))]
            self.stats["matmuls"] += 1
            out = self.builder_.emit(relax.call_tir(gv, args, relax.TensorType((m, w.shape[1]), "int32")))
            return relax.op.reshape(out, (*shape[:-1], w.shape[1]))   # fused into the dequantizing epilogue

        def conv(self, call):
            """conv2d(dequantize(q: uint8, s, zp), dequantize(W: int8 constant, per-channel scales, 0)) (a QDQ conv
            of the stem) -> im2col of q into the kernel's operand type, the kernel, then one float multiply by
            s * s_W per channel and the layout back to NCHW. The sums are exact integers; the fp32 conv it
            replaces rounded at every product (outputs differ by float rounding only). None if not that form."""
            at = call.attrs
            if (int(at.groups) != 1 or at.data_layout != "NCHW" or at.kernel_layout != "OIHW"
                    or at.out_layout != "NCHW" or str(at.out_dtype) not in ("None", "", "float32", "void")):
                return None
            x, wd = self.value(call.args[0]), self.value(call.args[1])
            if not (is_call(x, dequantize) and is_call(wd, dequantize)):
                return None
            q, sx, zx = x.args[0], self.value(x.args[1]), self.value(x.args[2])
            w, sw, zw = (self.value(v) for v in wd.args)
            consts = (sx, zx, w, sw, zw)
            if not all(isinstance(c, tvm.ir.Constant) for c in consts) or dtype_of(q) != "uint8":
                return None
            sx, zx, w, sw, zw = (c.value.numpy() for c in consts)
            per_channel_o = sw.ndim == 0 or int(wd.attrs.axis) % 4 == 0   # scales along the output channels
            if sx.ndim or zx.ndim or w.dtype != np.int8 or w.ndim != 4 or zw.any() or not per_channel_o:
                return None
            shape = [int(d) for d in q.ty.shape.values]
            o, c, kh, kw = w.shape
            k = c * kh * kw
            if shape[0] != 1 or shape[1] != c or k % kern.group:
                return None
            (sh, sw_), (dh, dw), (pt, pl, pb, pr) = ([int(v) for v in t] for t in (at.strides, at.dilation, at.padding))
            h, wi = shape[2], shape[3]
            oh, ow = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (wi + pl + pr - dw * (kw - 1) - 1) // sw_ + 1
            m, zp = oh * ow, int(zx)
            # NHWC: each patch row is KH*KW runs of C contiguous channels. The transpose fuses into the
            # producer of q (the previous conv's epilogue, which then writes its [M, O] sums in place).
            nhwc = self.builder_.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))
            im2col = im2col_func(kern, zp, shape, (kh, kw), (sh, sw_), (pt, pl), (dh, dw), (oh, ow))
            cols = self.builder_.emit(relax.call_tir(self.builder_.add_func(im2col, "im2col"), [nhwc],
                                                     relax.TensorType((oh, ow, kh, kw, c), kern.act_dtype)))
            cols = self.builder_.emit(relax.op.reshape(cols, (m, k)))
            wk = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k, o))   # [K, N], K ordered (kh, kw, c)
            f = prim_func(kern, m, k, o).without_attr("global_symbol")
            gv = self.builder_.add_func(f, f"int8_conv_{kern.name.replace('-', '_')}")
            args = [cols, relax.const(pack_weight(kern, wk))]
            if kern.corrected:
                args = [cols, relax.const(np.uint8(zp)), args[1], relax.const(column_sums(kern, wk))]
            acc = self.builder_.emit(relax.call_tir(gv, args, relax.TensorType((m, o), "int32")))
            scale = (np.float64(sx) * np.broadcast_to(sw.astype(np.float64).reshape(-1), (o,))).astype(np.float32)
            y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale))
            self.stats["convs"] += 1
            return relax.op.permute_dims(relax.op.reshape(y, (1, oh, ow, o)), [0, 3, 1, 2])

        def prepare(self, a, zp, m):
            """The kernel's [m, K] activation operand (one binding per activation, shared by its Q/K/V matmuls):
            the dynamic_quantize call's, when `a` is quantize(x, its scale, its zero point)."""
            key = (a, zp)
            if key not in self.prepared:
                op = relax.op
                k = int(a.ty.shape.values[-1])
                q = self.value(a)
                dq = self.quantize_of(q.args[1], 1) if is_call(q, quantize) else None
                z = self.quantize_of(q.args[2], 2) if dq is not None else None
                if z is not None and z.same_as(dq):
                    ap = op.reshape(relax.TupleGetItem(dq, 0), (m, k))
                elif kern.act_dtype == "uint8":
                    ap = op.reshape(a, (m, k))
                elif kern.act_dtype == "int8":
                    ap = op.astype(op.subtract(op.astype(op.reshape(a, (m, k)), "int16"), relax.const(128, "int16")),
                                   "int8")
                else:
                    ap = op.subtract(op.astype(op.reshape(a, (m, k)), "int16"), op.astype(zp, "int16"))
                self.prepared[key] = self.builder_.emit(ap)
            return self.prepared[key]

    @tvm.transform.module_pass(opt_level=0, name="Int8MatmulKernels")
    def apply(mod, _ctx):
        rw = Rewrite(mod)
        for gv, f in list(mod.functions_items()):
            if isinstance(f, relax.Function):
                rw.prepared.clear()
                rw.builder_.update_func(gv, rw.visit_expr(f))
        if stats is not None:
            stats.update(rw.stats)
        return rw.builder_.get()
    return apply


def im2col_func(kern: Kernel, zp: int, in_shape, kernel_hw, strides, pads, dilation, out_hw):
    """The PrimFunc writing the [OH, OW, KH, KW, C] patches (viewed as the [OH*OW, KH*KW*C] matrix) of a
    [1, H, W, C] uint8 tensor in the kernel's operand type (q, q - zp or q - 128), padded with the zero point's
    operand: the innermost loop copies C contiguous channels. Marked opaque: fused, FuseOps would merge the
    previous conv's epilogue (GELU, quantize) into it and recompute it for each of the KH*KW patches that read
    an element (measured: 3x slower than the fp32 conv it replaces)."""
    from tvm import te, tirx
    (kh, kw), (sh, sw), (pt, pl), (dh, dw) = kernel_hw, strides, pads, dilation
    _, c, h, w = in_shape
    dt = kern.act_dtype

    def operand(v):  # v: uint8
        if dt == "uint8":
            return v
        if dt == "int16":
            return v.astype("int16") - tirx.const(zp, "int16")
        return (v.astype("int16") - tirx.const(128, "int16")).astype("int8")

    x = te.placeholder((1, h, w, c), "uint8", name="x")
    pad = operand(tirx.const(zp, "uint8"))

    def at(oh, ow, i, j, ci):
        ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
        inside = tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)
        return tirx.if_then_else(inside, operand(x[0, ih, iw, ci]), pad)
    cols = te.compute((*out_hw, kh, kw, c), at, name="im2col")
    return te.create_prim_func([x, cols]).with_attr("op_pattern", 8).without_attr("global_symbol")


def strip_layout_free(mod):
    """Our kernels' weights are packed already: drop the layout_free_buffers that AttachAttrLayoutFreeBuffers
    gave them (SplitLayoutRewritePreproc expects schedule blocks there, which hand-written loops lack)."""
    import tvm
    for gv, f in list(mod.functions_items()):
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and MARK in f.attrs:
            mod[gv] = f.without_attr("layout_free_buffers")
    return mod
