"""Tuning-free CPU schedule rules (DLight-style) for the kernels a Relax-fused model produces.

`dl.ApplyDefaultSchedule(*cpu_rules(isa))` runs the rules in order on every PrimFunc; the first
rule that returns a schedule wins. Every rule returns None on anything it does not handle (and on
any schedule error), so the next rule, and at the end TVM's unscheduled default, takes over.

    Contraction   one reduction block `C += X * Y` (matmul, batch matmul, conv2d, int8 matmul):
                  producers inlined, the elementwise epilogue (bias, GELU, residual) merged into
                  one block computed on each register tile; vector lanes along the axis whose
                  reads are contiguous or broadcast; an MR x (NV*lanes) register tile sized to the
                  vector register file; tile loops fused and parallel; reduction outside the tile.
                  A weight that is strided along the vector axis (OIHW conv kernels) is repacked
                  into [O/NR, ..., NR] panels; the repack is marked layout-rewrite so the compile
                  pipeline splits it out and folds it into the constant at build time.
    RowReduction  softmax / LayerNorm / mean: every block computed per row (fused leading
                  spatial axes, parallel), elementwise parts vectorized, row reductions split by
                  lanes and unrolled.
    Elementwise   everything else: inline what inlines, fuse spatial loops, parallel outer,
                  vectorize the innermost loop.

`Isa` carries the facts the rules need (vector bits, number of vector registers); they come from
the target profile (targets/*.toml), not from LLVM (which reports 512 bits for znver3's AVX2).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
import tvm.sym as sym
from tvm.ir import prim
from tvm.ir.expr import TensorLoad
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize
from tvm_ffi import get_global_func

DATA_PAR, COMM_REDUCE = 0, 2
PARALLEL_MIN_WORK = 4096  # below this many output elements a kernel runs on one thread


@dataclass(frozen=True)
class Isa:
    vector_bits: int = 256      # AVX2 256, AVX-512 512, NEON 128
    vector_registers: int = 16  # AVX2 16, AVX-512 32, NEON 32
    threads: int = 0            # 0: whatever the runtime's thread pool has

    def lanes(self, dtype_bits: int = 32) -> int:
        return max(self.vector_bits // dtype_bits, 1)


# ---------------------------------------------------------------- helpers
def _ext(sch, loop) -> int | None:
    e = sch.get(loop).extent
    return int(e) if isinstance(e, prim.IntImm) else None


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


_HAS_IF = get_global_func("s_tir.schedule.HasIfThenElse")


def _has_if_then_else(stmt) -> bool:
    return bool(_HAS_IF(stmt))


def _is_reduction(stmt) -> bool:
    return any(int(iv.iter_type) == COMM_REDUCE for iv in stmt.iter_vars)


def _trivially_bound(sch, block) -> bool:
    """Each loop binds exactly one block var, in order (the form legalization produces)."""
    loops = sch.get_loops(block)
    vals = get_sblockrealize(sch, block).iter_values
    return len(loops) == len(vals) and all(v.same_as(sch.get(lp).loop_var) for v, lp in zip(vals, loops))


def _coef(expr, var) -> int | None:
    """Coefficient of `var` in an affine index expression; None when not affine in it."""
    r = sym.detect_linear_equation(expr, [var])
    if len(r) != 2 or not isinstance(r[0], prim.IntImm):
        return None
    return int(r[0])


def _access(indices, var) -> str:
    """How a buffer access moves along `var`: 'bcast' (not at all), 'contig' (last index, step 1,
    no other index moves), or 'strided'."""
    coefs = [_coef(e, var) for e in indices]
    if any(c is None for c in coefs):
        return "strided"
    if all(c == 0 for c in coefs):
        return "bcast"
    if coefs[-1] == 1 and all(c == 0 for c in coefs[:-1]):
        return "contig"
    return "strided"


def _factors(expr) -> list | None:
    """The two factors of a product `X * Y` (a cast around the product allowed)."""
    while isinstance(expr, prim.Cast):
        expr = expr.value
    return [expr.a, expr.b] if isinstance(expr, prim.Mul) else None


def _collect_loads(expr, out: list) -> bool:
    """All buffer loads in `expr`; False if it holds something the rule does not model."""
    if isinstance(expr, TensorLoad):
        out.append(expr)
        return all(_no_loads(i) for i in expr.indices)  # no gathers
    if isinstance(expr, (prim.IntImm, prim.FloatImm)) or isinstance(expr, tirx.Var):
        return True
    if isinstance(expr, prim.Cast):
        return _collect_loads(expr.value, out)
    if hasattr(expr, "a") and hasattr(expr, "b"):
        return _collect_loads(expr.a, out) and _collect_loads(expr.b, out)
    return False


def _no_loads(expr) -> bool:
    found: list = []
    return _collect_loads(expr, found) and not found


def _factor_access(loads, var) -> str:
    kinds = {_access(list(ld.indices), var) for ld in loads}
    return "strided" if "strided" in kinds else "contig" if "contig" in kinds else "bcast"


def _vectorize_inner(sch, block, lanes: int, max_lanes: int | None = None) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    e = _ext(sch, loops[-1])
    if e is None or e < 2:
        return
    cap = max_lanes or lanes * 4
    if e <= cap:
        sch.vectorize(loops[-1])
    else:
        for v in (lanes * 2, lanes, lanes // 2, 4):
            if v >= 2 and e % v == 0:
                _, inner = sch.split(loops[-1], [None, v])
                sch.vectorize(inner)
                return


def _parallel_outer(sch, block, n_spatial: int, work: int) -> None:
    """Fuse the first n_spatial loops of `block` and run them in parallel if worth it."""
    loops = sch.get_loops(block)[:n_spatial]
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work >= PARALLEL_MIN_WORK and (_ext(sch, fused) or 0) > 1:
        sch.parallel(fused)


# ---------------------------------------------------------------- contraction
def _pick_tile(n_ext: int, m_ext: int, isa: Isa, dtype_bits: int) -> tuple[int, int, int] | None:
    """(mr, nv, lanes): the largest register tile MR x NV vectors that fits the register file
    (MR*NV accumulators + NV weight vectors + 1 broadcast) and divides the extents."""
    best, best_score = None, -1
    for lanes in (isa.lanes(dtype_bits), isa.lanes(dtype_bits) // 2, 4):
        if lanes < 4 or n_ext % lanes:
            continue
        for nv in (1, 2, 3, 4, 6, 8):
            if n_ext % (nv * lanes):
                continue
            for mr in range(1, 17):
                if m_ext % mr or mr * nv + nv + 1 > isa.vector_registers:
                    continue
                score = mr * nv * lanes + (1 if nv > 1 else 0)  # flops per step; prefer >1 vector
                if score > best_score:
                    best, best_score = (mr, nv, lanes), score
        if best is not None:
            return best
    return best


class _Rule(dl.ScheduleRule):
    """A CPU rule: None for other targets, and None (never an exception) when it does not apply,
    because ApplyDefaultSchedule lets an exception through and the next rule should run."""

    def __init__(self, isa: Isa):
        self.isa = isa

    def is_target_available(self, target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._apply(func)
        except Exception:  # noqa: BLE001 - schedule errors mean "not this rule"
            return None


class Contraction(_Rule):
    def _apply(self, func):
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        stmts = [sch.get(b) for b in blocks]
        red = [i for i, s in enumerate(stmts) if _is_reduction(s)]
        if len(red) != 1:
            return None
        ri = red[0]
        r_stmt = stmts[ri]
        body = r_stmt.body
        if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, prim.Add):
            return None
        acc = body.value.a
        if not (isinstance(acc, TensorLoad) and acc.source.same_as(body.buffer)):
            return None
        out_dtype_bits = body.buffer.dtype.bits
        layout_free = set(int(i) for i in func.attrs.get("layout_free_buffers", [])) if func.attrs else set()
        params = list(func.params)  # 0.27: the params are the buffers themselves

        def param_index(buf):
            return next((i for i, p in enumerate(params) if p.same_as(buf)), None)

        # inline producers (not padding: a conditional load inside the tile costs more than a pass)
        for b, s in zip(blocks[:ri], stmts[:ri]):
            if _has_if_then_else(s):  # padding
                continue
            try:
                sch.compute_inline(b)
            except Exception:  # noqa: BLE001
                pass
        red_block = sch.get_sblock(r_stmt.name_hint)
        if not _trivially_bound(sch, red_block):
            return None
        r_stmt = sch.get(red_block)
        body = r_stmt.body
        factors = _factors(body.value.b)
        if factors is None:
            return None
        operands = []  # per factor: its loads
        for f in factors:
            loads: list = []
            if not _collect_loads(f, loads) or not loads:
                return None
            operands.append(loads)

        # epilogue: inline all but the last elementwise block after the reduction
        consumers = [sch.get_sblock(s.name_hint) for s in stmts[ri + 1:]]
        for b in consumers[:-1]:
            sch.compute_inline(b)
        if consumers:
            epi = consumers[-1]
            if _is_reduction(sch.get(epi)):
                return None
        else:
            epi = sch.cache_write(red_block, 0, "local")

        iters = list(r_stmt.iter_vars)
        spatial = [i for i, iv in enumerate(iters) if int(iv.iter_type) == DATA_PAR]
        reduce_ = [i for i, iv in enumerate(iters) if int(iv.iter_type) == COMM_REDUCE]
        if len(spatial) + len(reduce_) != len(iters) or not reduce_:
            return None
        exts = [int(iv.dom.extent) if isinstance(iv.dom.extent, prim.IntImm) else None for iv in iters]
        if None in exts:
            return None
        out_idx = list(body.indices)

        # choose the vector axis: reads contiguous or broadcast (repack a strided constant weight)
        cands = []
        for si in spatial:
            v = iters[si].var
            if exts[si] < 4:
                continue
            kinds = [_factor_access(loads, v) for loads in operands]
            repack = []
            ok = True
            for k, loads in zip(kinds, operands):
                if k == "strided":
                    strided = [ld for ld in loads if _access(list(ld.indices), v) == "strided"]
                    pi = param_index(strided[0].source) if len(strided) == 1 else None
                    if pi is None or (layout_free and pi not in layout_free):
                        ok = False
                        break
                    repack.append(strided[0])
            if not ok or len(repack) > 1:
                continue
            out_kind = _access(out_idx, v)
            cands.append((len(repack), out_kind != "contig", -si, si, repack))
        if not cands:
            return None
        cands.sort(key=lambda c: c[:3])
        # the candidate whose register tile does the most multiply-adds per step (ties: the order above).
        # A stride-1 conv's rows (xx) of 10, 20 or 40 fit no tile or a small one; its output channels, with
        # the weight repacked at compile time, fit a full one (YOLOv8n: 5.4x faster, BENCHMARKS.md)
        plans = []
        for _, _, _, vi, repack in cands:
            mi = _row_axis(iters, spatial, exts, operands, vi)
            tile = _pick_tile(exts[vi], exts[mi] if mi is not None else 1, self.isa, out_dtype_bits)
            if tile is not None:
                plans.append((-tile[0] * tile[1] * tile[2], len(plans), vi, repack, mi, tile))
        if not plans:
            return None
        _, _, vi, repack, mi, tile = min(plans)
        vvar = iters[vi].var
        mr, nv, lanes = tile
        nr = nv * lanes

        # repack a strided weight into [..., N/NR, ..., NR] panels (a layout-rewrite block)
        for op in repack:
            ridx = [j for j, r in enumerate(r_stmt.reads) if r.source.same_as(op.source)][0]
            pos = [j for j, e in enumerate(op.indices) if _coef(e, vvar) not in (0,)]
            if len(pos) != 1 or _coef(op.indices[pos[0]], vvar) != 1:
                return None
            p = pos[0]
            ndim = len(op.indices)
            cr = sch.cache_read(red_block, ridx, "global")
            sch.transform_layout(cr, ("write", 0), _panel_map(ndim, p, nr))
            sch.annotate(cr, "meta_schedule.layout_rewrite_preproc", True)

        # accumulate in a local buffer laid out [.., M, N] with the vector axis innermost
        loops = sch.get_loops(red_block)
        s_loops = [loops[i] for i in spatial]
        r_loops = [loops[i] for i in reduce_]
        jo, ji = sch.split(loops[vi], [None, nr])
        jvo, jv = sch.split(ji, [nv, lanes])
        if mi is not None:
            io, ii = sch.split(loops[mi], [None, mr])
        else:
            io = ii = None
        outer = [lp for i, lp in zip(spatial, s_loops) if i not in (vi, mi)]
        outer += ([io] if io is not None else []) + [jo]
        inner = ([ii] if ii is not None else []) + [jvo, jv]
        sch.reorder(*outer, *r_loops, *inner)
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        work = 1
        for i in spatial:
            work *= exts[i]
        if work >= PARALLEL_MIN_WORK and (_ext(sch, fused) or 0) > 1:
            sch.parallel(fused)
        sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
        # the accumulator tile: local scope, vector axis innermost
        sch.set_scope(red_block, 0, "local")
        if vi != len(out_idx) - 1 and _access(out_idx, vvar) != "contig":
            sch.transform_layout(red_block, ("write", 0), _move_last_map(len(out_idx), _out_pos(out_idx, vvar)))
        sch.vectorize(jv)
        sch.unroll(jvo)
        if ii is not None:
            sch.unroll(ii)
        init = sch.decompose_reduction(red_block, r_loops[0])
        il = sch.get_loops(init)
        sch.vectorize(il[-1])
        # epilogue on the tile: vectorize its innermost loop
        _vectorize_inner(sch, epi, lanes, max_lanes=nr)
        return sch


def _row_axis(iters, spatial, exts, operands, vi):
    """The row axis of a tile vectorized along iters[vi]: the innermost other spatial axis that the
    vector-side operand does not read, so one vector load serves every row (a matmul's M). Failing that,
    one along which the other operand is broadcast, each row loading its own vectors: a depthwise conv,
    whose input every axis reads but whose weight is the same for all its rows (before, one row: 2 GMAC/s on
    PP-OCRv4 det's 5x5 depthwise convs). None: one row."""
    vvar = iters[vi].var
    vec_side = [loads for loads in operands if _factor_access(loads, vvar) != "bcast"]
    others = [loads for loads in operands if _factor_access(loads, vvar) == "bcast"]
    for sides in (vec_side, others if others else None):
        if sides is None:
            break
        for si in reversed(spatial):
            if si == vi or exts[si] < 2:
                continue
            if all(_factor_access(loads, iters[si].var) == "bcast" for loads in sides):
                return si
    return None


def _out_pos(out_idx, var) -> int:
    for j, e in enumerate(out_idx):
        if _coef(e, var) not in (0, None):
            return j
    raise ValueError("vector var not in output")


def _panel_map(ndim: int, p: int, nr: int):
    """(d0..dn) -> (d_p // nr, d0.., d_p % nr) without d_p: the vector axis split into panels."""
    def f(*d):
        rest = [d[j] for j in range(ndim) if j != p]
        return (d[p] // nr, *rest, d[p] % nr)
    return f


def _move_last_map(ndim: int, p: int):
    def f(*d):
        return (*[d[j] for j in range(ndim) if j != p], d[p])
    return f


# ---------------------------------------------------------------- row reductions
class RowReduction(_Rule):
    """softmax / LayerNorm: reductions and elementwise blocks over the same leading rows, all
    computed per row (rows in parallel), elementwise parts vectorized. (Vectorizing the reductions
    with rfactor was tried: 0.27's vectorize refuses the rfactor'ed block under compute_at.)"""

    def _apply(self, func):
        sch = s_tir.Schedule(func)
        stmts = [sch.get(b) for b in _blocks(sch)]
        if len(stmts) < 2 or not any(_is_reduction(s) for s in stmts) or _is_reduction(stmts[-1]):
            return None
        for s in stmts[:-1]:  # inline elementwise blocks between the reductions (exp, delta, mean)
            if not _is_reduction(s):
                try:
                    sch.compute_inline(sch.get_sblock(s.name_hint))
                except Exception:  # noqa: BLE001 - a block that cannot inline stays a block
                    pass
        blocks = _blocks(sch)
        stmts = [sch.get(b) for b in blocks]
        if not all(_trivially_bound(sch, b) for b in blocks):
            return None
        out_dims = [int(iv.dom.extent) for iv in stmts[-1].iter_vars]
        nlead = min(min(_leading_spatial(s) for s in stmts), len(out_dims) - 1)
        if nlead < 1:
            return None
        lanes = self.isa.lanes(32)
        rfs = []  # row reductions split by lanes and rfactor'ed: `lanes` partial sums per row
        for b, s in zip(blocks[:-1], stmts[:-1]):
            e = int(s.iter_vars[-1].dom.extent)
            if _is_reduction(s) and len(s.iter_vars) == nlead + 1 and e % lanes == 0 and e >= 2 * lanes:
                _, ki = sch.split(sch.get_loops(b)[-1], [None, lanes])
                rfs.append(sch.rfactor(ki, factor_axis=len(s.writes[0].region)))
        blocks = _blocks(sch)
        last = blocks[-1]
        lps = sch.get_loops(last)
        row = sch.fuse(*lps[:nlead]) if nlead > 1 else lps[0]
        _vectorize_inner(sch, last, lanes)  # before compute_at (vectorize checks the whole scope)
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, row, preserve_unit_loops=True)
        for b in blocks[:-1]:
            if not _is_reduction(sch.get(b)):
                _vectorize_inner(sch, b, lanes)
            elif not any(sch.get(b).same_as(sch.get(rf)) for rf in rfs):
                r = sch.get_loops(b)[-1]  # a row sum/max not rfactor'ed: split by lanes, unrolled
                if (_ext(sch, r) or 0) > lanes:
                    _, ri = sch.split(r, [None, lanes])
                    sch.unroll(ri)
        for rf in rfs:
            _vectorize_rfactor(sch, rf)
        work = 1
        for d in out_dims:
            work *= d
        if work >= PARALLEL_MIN_WORK and (_ext(sch, row) or 0) > 1:
            sch.parallel(row)
        return sch


def _vectorize_rfactor(sch, rf) -> None:
    """The rfactor block's lane loop innermost under its reduction loop, vectorized (before any
    decompose_reduction: 0.27's vectorize refuses a loop over a decomposed update block)."""
    st = sch.get(rf)
    lane_var = st.writes[0].region[-1].min
    red_var = next(iv.var for iv in st.iter_vars if int(iv.iter_type) == COMM_REDUCE)
    vals = get_sblockrealize(sch, rf).iter_values
    loops = sch.get_loops(rf)

    def loop_of(var):
        v = vals[next(j for j, iv in enumerate(st.iter_vars) if iv.var.same_as(var))]
        return next(lp for lp in loops if sch.get(lp).loop_var.same_as(v))
    lane, red = loop_of(lane_var), loop_of(red_var)
    sch.reorder(red, lane)
    sch.vectorize(lane)


def _leading_spatial(stmt) -> int:
    n = 0
    for iv in stmt.iter_vars:
        if int(iv.iter_type) != DATA_PAR:
            break
        n += 1
    return n


# ---------------------------------------------------------------- elementwise / fallback
class Elementwise(_Rule):
    def _apply(self, func):
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        for b in blocks[:-1]:
            try:
                sch.compute_inline(b)
            except Exception:  # noqa: BLE001
                pass
        blocks = _blocks(sch)
        lanes = self.isa.lanes(32)
        for b in blocks:
            st = sch.get(b)
            if _is_reduction(st) or not _trivially_bound(sch, b):
                continue
            dims = [int(iv.dom.extent) for iv in st.iter_vars]
            work = 1
            for d in dims:
                work *= d
            if len(dims) > 1:
                _parallel_outer(sch, b, len(dims) - 1, work)
            _vectorize_inner(sch, b, lanes)
        return sch


def cpu_rules(isa: Isa) -> list:
    """The rules in the order ApplyDefaultSchedule tries them; upstream ones last."""
    return [Contraction(isa), RowReduction(isa), Elementwise(isa), dl.cpu.Reduction(), dl.cpu.GEMV()]
