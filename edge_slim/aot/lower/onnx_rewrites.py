"""ONNX-to-ONNX rewrites that make a bring-your-own graph importable by TVM's Relax ONNX frontend.

Exported models arrive with dynamic dimensions (`-1`, `N`, `batch`, `?`), inputs that only select a
code path (a sample rate feeding an `If`), and operators or operator forms TVM 0.27's importer lacks.
All of this is fixed here, on the ONNX graph, before import (pipeline.py's `load` phase calls `prepare`):

    resolve_inputs   --input-shape / --dynamic / --bind -> one spec per remaining input; symbolic
                     dimension names shared between inputs (`batch` in `input` and `state`) get one value
    bind_inputs      --bind NAME=VALUE: the input becomes a constant, so the graph folds around it
    fold             constant folding of our own (ONNX's reference evaluator, node by node; `Shape` of a
                     statically shaped tensor), and `If` with a constant condition replaced by the taken
                     branch, inlined; repeated until nothing changes (an inlined branch may hold more Ifs)
    REWRITES         operator forms the importer lacks, rewritten into ones it has (a registry: name ->
                     function(model) -> number of nodes rewritten)
    check_operators  whatever is still missing is listed all at once: op, count, where, what to do

No TVM here (check_operators asks the importer's convert map, imported on call); onnx and numpy only.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from typing import Callable

import numpy as np

from ...errors import BadInputError, ModelError

ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}
# never folded: int8 weights must stay int8 constants (dequantize is fused into the kernel), and random ops
NO_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
           "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
FLOATS = {1: np.float32, 10: np.float16, 11: np.float64}
FOLD_MAX_ELEMENTS = 1 << 22     # a folded constant larger than this stays a node (it would bloat the artifact)
DOCS = "docs/compile.md (section 'Operators'); rewrites live in edge_slim/aot/lower/onnx_rewrites.py"


# ---------------------------------------------------------------- inputs
def dim_of(d) -> int | str | None:
    """An ONNX dimension: an int (static), a name (symbolic `batch`), or None (`?`, `-1`, unnamed)."""
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    return d.dim_param if d.dim_param and d.dim_param != "?" else None


def resolve_inputs(m, shapes: dict[str, list[int]], dynamic: dict[str, int], binds: dict[str, object]) -> list[dict]:
    """One spec per graph input that is not bound: {"name", "shape", "dtype"} (+ "dynamic": {dim: max}).

    Static sizes come from the model or `shapes`; a symbolic name is resolved once for every input that
    uses it. A dimension named in `dynamic` stays symbolic (shape entry = its name) with that upper bound.
    """
    init = {i.name for i in m.graph.initializer}
    graph_inputs = [i for i in m.graph.input if i.name not in init]
    names = [i.name for i in graph_inputs]
    for flag, given in (("--input-shape", shapes), ("--bind", binds)):
        unknown = set(given) - set(names)
        if unknown:
            raise BadInputError(f"{flag} names {', '.join(sorted(unknown))}, which the model does not have "
                                f"(its inputs: {', '.join(names)})")
    both = set(shapes) & set(binds)
    if both:
        raise BadInputError(f"{', '.join(sorted(both))}: given both --input-shape and --bind; a bound input has "
                            "the shape of its value")
    declared = {i.name: [dim_of(d) for d in i.type.tensor_type.shape.dim] for i in graph_inputs}
    symbols: dict[str, int] = {}
    for name, given in shapes.items():
        dims = declared[name]
        if len(given) != len(dims) or any(isinstance(d, int) and d != g for d, g in zip(dims, given)):
            raise BadInputError(f"--input-shape {name}={','.join(map(str, given))} does not fit the model's shape "
                                f"{_show(dims)}")
        for d, g in zip(dims, given):
            if isinstance(d, str):
                if symbols.setdefault(d, g) != g:
                    raise BadInputError(f"--input-shape gives dimension {d!r} two sizes ({symbols[d]} and {g}); "
                                        "inputs that share a dimension name must agree")
    unknown_dyn = set(dynamic) - {d for dims in declared.values() for d in dims if isinstance(d, str)}
    if unknown_dyn:
        named = sorted({d for dims in declared.values() for d in dims if isinstance(d, str)})
        raise BadInputError(f"--dynamic {', '.join(sorted(unknown_dyn))}: the model has no symbolic dimension of "
                            f"that name (its named dimensions: {', '.join(named) or 'none'})")
    out = []
    for i in graph_inputs:
        tt = i.type.tensor_type
        dtype = ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise ModelError(f"input {i.name}: element type {tt.elem_type} is not supported")
        if i.name in binds:
            continue
        dims = shapes.get(i.name) or [symbols.get(d, d) if isinstance(d, str) and d not in dynamic else d
                                      for d in declared[i.name]]
        if any(d is None or (isinstance(d, str) and d not in dynamic) for d in dims):
            hint = ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
            raise BadInputError(f"input {i.name} has dynamic dimensions {_show(declared[i.name])}; fix them with "
                                f"--input-shape {i.name}={hint}")
        spec = {"name": i.name, "shape": list(dims), "dtype": dtype}
        dyn = {d: dynamic[d] for d in dims if isinstance(d, str)}
        if dyn:
            spec["dynamic"] = dyn
        out.append(spec)
    return out


def _show(dims) -> list:
    return [d if d is not None else "?" for d in dims]


def apply_input_specs(m, specs: list[dict]) -> None:
    """Write the resolved shapes into the graph's input declarations (symbolic dims keep their name)."""
    by_name = {s["name"]: s for s in specs}
    for i in m.graph.input:
        spec = by_name.get(i.name)
        if spec is None:
            continue
        for d, v in zip(i.type.tensor_type.shape.dim, spec["shape"]):
            if isinstance(v, str):
                d.ClearField("dim_value")
                d.dim_param = v
            else:
                d.ClearField("dim_param")
                d.dim_value = int(v)


def parse_bind(spec: str) -> tuple[str, object]:
    """NAME=VALUE (a number or a comma list) or NAME=FILE.npy -> (name, raw value)."""
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise BadInputError(f"--bind {spec!r}: expected NAME=VALUE (a number, a comma list, or a .npy file)")
    if value.endswith(".npy"):
        try:
            return name, np.load(value, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"--bind {name}={value}: not a readable .npy file ({e})") from None
    try:
        nums = [float(v) if any(c in v for c in ".eE") or v in ("nan", "inf", "-inf") else int(v)
                for v in value.split(",")]
    except ValueError:
        raise BadInputError(f"--bind {spec!r}: {value!r} is not a number, a comma list of numbers or a .npy file") from None
    return name, nums


def parse_dynamic(spec: str) -> tuple[str, int]:
    """NAME=MAX (a symbolic dimension kept symbolic, sizes 1..MAX) -> (name, max)."""
    name, sep, value = spec.partition("=")
    try:
        bound = int(value)
    except ValueError:
        bound = 0
    if not sep or not name or bound < 1:
        raise BadInputError(f"--dynamic {spec!r}: expected NAME=MAX, a dimension name of the model and its "
                            "largest size (e.g. batch=8)")
    return name, bound


def bind_inputs(m, binds: dict[str, object]) -> dict[str, list]:
    """Turn each bound input into an initializer of the input's dtype and shape; -> {name: value as list}."""
    from onnx import numpy_helper
    done = {}
    for i in list(m.graph.input):
        if i.name not in binds:
            continue
        tt = i.type.tensor_type
        dtype = ONNX_DTYPES.get(tt.elem_type)
        dims = [dim_of(d) for d in tt.shape.dim]
        raw = np.asarray(binds[i.name])
        try:
            val = raw.astype(dtype)
            if all(isinstance(d, int) for d in dims):
                val = val.reshape(dims)
            elif val.size == 1 and not dims:
                val = val.reshape(())
            elif len(dims) != val.ndim:
                raise ValueError(f"rank {val.ndim} for an input of rank {len(dims)}")
        except (ValueError, TypeError) as e:
            raise BadInputError(f"--bind {i.name}: the value does not fit the input {_show(dims)} {dtype} ({e})") from None
        m.graph.input.remove(i)
        m.graph.initializer.append(numpy_helper.from_array(val, i.name))
        done[i.name] = val.tolist()
    return done


# ---------------------------------------------------------------- constant folding and If inlining
def fold(m, log: Callable[[str], None] = lambda s: None) -> dict[str, int]:
    """Fold constants and inline `If`s whose condition became constant, until nothing changes.
    -> counts {"folded": nodes evaluated, "if_inlined": Ifs replaced by their taken branch}."""
    stats = {"folded": 0, "if_inlined": 0}
    for _ in range(50):
        changed = _fold_once(m, stats)
        if not changed:
            break
    _dead_code(m)
    return stats


def _constants(m) -> dict[str, np.ndarray]:
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _static_shapes(m) -> dict[str, list[int]]:
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is an optimization here; without it only constants fold
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [dim_of(d) for d in tt.shape.dim]
            if all(isinstance(d, int) for d in dims):
                out[vi.name] = dims
    return out


def _fold_once(m, stats) -> bool:
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator
    consts = _constants(m)
    shapes = _static_shapes(m)
    outputs = {o.name for o in m.graph.output}
    opsets = {o.domain: o.version for o in m.opset_import}
    new_nodes, changed = [], False
    for n in m.graph.node:
        if n.op_type == "If" and n.input[0] in consts:
            branch = "then_branch" if bool(np.asarray(consts[n.input[0]]).reshape(-1)[0]) else "else_branch"
            g = next(a.g for a in n.attribute if a.name == branch)
            new_nodes += _inline(m, n, g)
            stats["if_inlined"] += 1
            changed = True
            continue
        value = None
        if n.domain in ("", "ai.onnx") and not any(o in outputs for o in n.output):
            if n.op_type == "Constant":
                value = [numpy_helper.to_array(n.attribute[0].t)] if n.attribute and n.attribute[0].name == "value" else None
                if value is None:
                    value = ReferenceEvaluator(n, opsets=opsets).run(None, {})
            elif n.op_type in ("Shape", "Size") and n.input[0] in shapes:
                shp = np.array(shapes[n.input[0]], np.int64)
                if n.op_type == "Size":
                    value = [np.array(int(np.prod(shp)), np.int64)]
                else:
                    a = {x.name: x.i for x in n.attribute}
                    value = [shp[a.get("start", 0): a.get("end", len(shp))]]   # ONNX clamps as Python slices
            elif (n.op_type not in NO_FOLD and n.input and all(x == "" or x in consts for x in n.input)
                  and not any(a.g.node for a in n.attribute if a.HasField("g"))):
                try:
                    value = ReferenceEvaluator(n, opsets=opsets).run(None, {x: consts[x] for x in n.input if x})
                except Exception:  # noqa: BLE001 - an op the reference evaluator lacks stays a node
                    value = None
        if value is not None and all(np.asarray(v).size <= FOLD_MAX_ELEMENTS for v in value):
            for name, v in zip(n.output, value):
                if not name:            # an optional output nobody asked for
                    continue
                arr = np.asarray(v)
                consts[name] = arr
                m.graph.initializer.append(numpy_helper.from_array(arr, name))
            stats["folded"] += 1
            changed = True
            continue
        new_nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    return changed


def _inline(m, node, g) -> list:
    """The nodes of branch `g` with every name it defines prefixed (no clash with the outer graph), its
    initializers moved to the main graph, and Identity nodes from its outputs to the If's outputs."""
    from onnx import helper
    prefix = (node.name or node.output[0]) + "/"
    defined = {o for n in _walk(g) for o in n.output if o} | {i.name for i in g.initializer}
    rename = {name: prefix + name for name in defined}
    for init in g.initializer:
        t = type(init)()
        t.CopyFrom(init)
        t.name = rename[init.name]
        m.graph.initializer.append(t)
    body = []
    for n in g.node:
        c = type(n)()
        c.CopyFrom(n)
        _rename(c, rename)
        body.append(c)
    for out, target in zip(g.output, node.output):
        if target:
            body.append(helper.make_node("Identity", [rename.get(out.name, out.name)], [target],
                                         name=f"{prefix}out_{target}"))
    return body


def _walk(g):
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.HasField("g"):
                yield from _walk(a.g)


def _rename(n, rename: dict[str, str]) -> None:
    for k, x in enumerate(n.input):
        n.input[k] = rename.get(x, x)
    for k, x in enumerate(n.output):
        n.output[k] = rename.get(x, x)
    if n.name:
        n.name = rename.get(n.name, n.name)
    for a in n.attribute:
        if a.HasField("g"):
            for sub in a.g.node:
                _rename(sub, rename)
            for o in a.g.output:
                o.name = rename.get(o.name, o.name)


def _dead_code(m) -> None:
    """Drop nodes and initializers nothing reads (folded chains leave their constants behind)."""
    live = {o.name for o in m.graph.output}
    keep = []
    for n in reversed(list(m.graph.node)):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(x for x in n.input if x)
            for sub in _walk_attrs(n):
                live.update(x for x in sub.input if x)
    del m.graph.node[:]
    m.graph.node.extend(reversed(keep))
    inits = [i for i in m.graph.initializer if i.name in live]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)


def _walk_attrs(n):
    for a in n.attribute:
        if a.HasField("g"):
            yield from _walk(a.g)


# ---------------------------------------------------------------- operator rewrites
def onehot_as_compare(m) -> int:
    """OneHot(indices, depth, values) -> Where(Unsqueeze(indices, -1) == arange(depth), on, off).

    The importer passes a one-element `depth` tensor (as Keras/tf2onnx export it) where an int is expected,
    and makes the output float64 whatever the `values` dtype; the comparison form is exact and imports.
    Only constant depth/values and the last axis (the exported form) are rewritten."""
    from onnx import helper, numpy_helper
    import onnx
    inits = {i.name: i for i in m.graph.initializer}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if not any(n.op_type == "OneHot" for n in m.graph.node):
        return 0
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in m.graph.input})
    producer = {o: n for n in m.graph.node for o in n.output}
    nodes, done = [], 0
    for n in m.graph.node:
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
        if n.op_type != "OneHot" or axis != -1 or n.input[1] not in inits or n.input[2] not in inits:
            nodes.append(n)
            continue
        depth = int(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
        off, on = numpy_helper.to_array(inits[n.input[2]]).reshape(-1)[:2]
        p = f"{n.name or n.output[0]}_onehot"
        # integer indices are compared in their own type: a Cast here would be inlined into every use (the
        # importer's float->int cast expands to a large expression, and LLVM then took minutes on it)
        # indices cast from floats (bytes as floats, say) are compared as floats, truncated as Cast does
        itype, idx, cast = types.get(n.input[0], 7), n.input[0], []
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Cast" and types.get(src.input[0]) in FLOATS:
            itype, x = types[src.input[0]], src.input[0]
            cast = [helper.make_node("Abs", [x], [p + "_abs"]), helper.make_node("Floor", [p + "_abs"], [p + "_fl"]),
                    helper.make_node("Sign", [x], [p + "_sgn"]), helper.make_node("Mul", [p + "_sgn", p + "_fl"], [p + "_t"])]
            idx = p + "_t"
        int_dtype = {**FLOATS, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64}.get(itype)
        if int_dtype is None:
            int_dtype = np.int64
            cast = [helper.make_node("Cast", [n.input[0]], [p + "_i64"], to=7)]
            idx = p + "_i64"
        m.graph.initializer.extend([numpy_helper.from_array(np.arange(depth, dtype=int_dtype), p + "_range"),
                                    numpy_helper.from_array(np.array(depth, int_dtype), p + "_depth"),
                                    numpy_helper.from_array(np.array(0, int_dtype), p + "_zero"),
                                    numpy_helper.from_array(np.array([-1], np.int64), p + "_axes"),
                                    numpy_helper.from_array(np.array(on), p + "_on"),
                                    numpy_helper.from_array(np.array(off), p + "_off")])
        unsq = (helper.make_node("Unsqueeze", [p + "_idx", p + "_axes"], [p + "_col"]) if opset >= 13 else
                helper.make_node("Unsqueeze", [p + "_idx"], [p + "_col"], axes=[-1]))
        nodes += [*cast,
                  helper.make_node("Less", [idx, p + "_zero"], [p + "_neg"]),
                  helper.make_node("Add", [idx, p + "_depth"], [p + "_wrapped"]),
                  helper.make_node("Where", [p + "_neg", p + "_wrapped", idx], [p + "_idx"]),
                  unsq,
                  helper.make_node("Equal", [p + "_col", p + "_range"], [p + "_hit"]),
                  helper.make_node("Where", [p + "_hit", p + "_on", p + "_off"], [n.output[0]])]
        done += 1
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return done


def lstm_unrolled(m) -> int:
    """LSTM -> its steps written out: per time step and direction one MatMul each for the input and the
    hidden state, the four gates (ONNX order i, o, f, c) as Slices, Sigmoid/Tanh, and the cell update.

    TVM's importer has no LSTM. Exported streaming models (voice activity, keyword spotting) run it over
    a handful of steps per call, with the sequence length fixed once the input shapes are bound, so the
    unrolled form is small and exact. Rewritten: forward, reverse and bidirectional, layout 0, the default
    activations, no peepholes, clip, input_forget or sequence_lens, constant W/R/B and a static input
    shape; any other LSTM stays and is named by check_operators."""
    from onnx import helper, numpy_helper
    if not any(n.op_type == "LSTM" for n in m.graph.node):
        return 0
    consts = _constants(m)
    shapes = _static_shapes(m)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    nodes, inits, done = [], [], 0
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def axes_node(op, x, axes, out):
        if opset >= 13:
            return helper.make_node(op, [x, const(out + "_axes", np.array(axes, np.int64))], [out])
        return helper.make_node(op, [x], [out], axes=axes)

    def unroll(p, x, d, reverse, steps, batch, hid, w, r, b, init):
        """One direction: -> (h after each step, indexed by time step; the last h; the last c)."""
        wt, rt = const(p + "_WT", w[d].T.copy()), const(p + "_RT", r[d].T.copy())       # [I, 4H], [H, 4H]
        bias = const(p + "_B", (b[d, :4 * hid] + b[d, 4 * hid:]).astype(w.dtype))
        state = {}
        for k, name in zip("hc", init):
            if name:     # [directions, batch, H] -> this direction's [batch, H]
                nodes.append(helper.make_node("Gather", [name, const(f"{p}_{k}d", np.array(d, np.int64))],
                                              [f"{p}_{k}0"], axis=0))
                state[k] = f"{p}_{k}0"
            else:
                state[k] = const(f"{p}_{k}0", np.zeros((batch, hid), w.dtype))
        gate = {g: (const(f"{p}_{g}_lo", np.array([j * hid], np.int64)),
                    const(f"{p}_{g}_hi", np.array([(j + 1) * hid], np.int64))) for j, g in enumerate("iofc")}
        one = const(p + "_axis1", np.array([1], np.int64))
        hs = {}
        for t in (reversed(range(steps)) if reverse else range(steps)):
            q = f"{p}{t}"
            nodes.extend([helper.make_node("Gather", [x, const(q + "_t", np.array(t, np.int64))], [q + "_x"], axis=0),
                          helper.make_node("MatMul", [q + "_x", wt], [q + "_xw"]),
                          helper.make_node("MatMul", [state["h"], rt], [q + "_hr"]),
                          helper.make_node("Add", [q + "_xw", q + "_hr"], [q + "_s"]),
                          helper.make_node("Add", [q + "_s", bias], [q + "_g"])])
            for g, (lo, hi) in gate.items():
                nodes.extend([helper.make_node("Slice", [q + "_g", lo, hi, one], [f"{q}_{g}s"]),
                              helper.make_node("Tanh" if g == "c" else "Sigmoid", [f"{q}_{g}s"], [f"{q}_{g}"])])
            nodes.extend([helper.make_node("Mul", [q + "_f", state["c"]], [q + "_fc"]),
                          helper.make_node("Mul", [q + "_i", q + "_c"], [q + "_ic"]),
                          helper.make_node("Add", [q + "_fc", q + "_ic"], [q + "_cell"]),
                          helper.make_node("Tanh", [q + "_cell"], [q + "_tc"]),
                          helper.make_node("Mul", [q + "_o", q + "_tc"], [q + "_h"])])
            state = {"h": q + "_h", "c": q + "_cell"}
            hs[t] = q + "_h"
        return hs, state["h"], state["c"]

    for n in m.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        ins = list(n.input) + [""] * (8 - len(n.input))
        acts = [v.decode() if isinstance(v, bytes) else v for v in a.get("activations", [])]
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        dirs = directions.get(direction)
        ok = (n.op_type == "LSTM" and (n.domain or "ai.onnx") == "ai.onnx" and dirs is not None
              and not a.get("layout", 0) and acts in ([], ["Sigmoid", "Tanh", "Tanh"] * len(dirs))
              and "clip" not in a and not a.get("input_forget", 0) and not ins[4] and not ins[7]
              and ins[1] in consts and ins[2] in consts and (not ins[3] or ins[3] in consts)
              and len(shapes.get(ins[0], [])) == 3)
        if not ok:
            nodes.append(n)
            continue
        hid = int(a["hidden_size"])
        steps, batch, _ = shapes[ins[0]]
        w, r = consts[ins[1]], consts[ins[2]]
        b = consts[ins[3]] if ins[3] else np.zeros((len(dirs), 8 * hid), w.dtype)
        p = f"{n.name or n.output[0]}_lstm"
        runs = [unroll(f"{p}{'fb'[rev] if len(dirs) > 1 else ''}", ins[0], d, rev, steps, batch, hid, w, r, b,
                       (ins[5], ins[6])) for d, rev in enumerate(dirs)]
        outs = list(n.output) + [""] * (3 - len(n.output))
        if outs[0]:      # Y: [steps, directions, batch, H]
            ys = []
            for t in range(steps):
                parts = []
                for k, (hs, _, _) in enumerate(runs):
                    nodes.append(axes_node("Unsqueeze", hs[t], [0, 1], f"{p}_y{t}_{k}"))
                    parts.append(f"{p}_y{t}_{k}")
                if len(parts) > 1:
                    nodes.append(helper.make_node("Concat", parts, [f"{p}_y{t}"], axis=1))
                ys.append(parts[0] if len(parts) == 1 else f"{p}_y{t}")
            nodes.append(helper.make_node("Concat", ys, [outs[0]], axis=0))
        for j, out in ((1, outs[1]), (2, outs[2])):      # Y_h, Y_c: [directions, batch, H]
            if out:
                last = [axes_node("Unsqueeze", run[j], [0], f"{out}_{k}") for k, run in enumerate(runs)]
                nodes.extend(last)
                nodes.append(helper.make_node("Concat", [x.output[0] for x in last], [out], axis=0))
        done += 1
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    return done


REWRITES: dict[str, Callable] = {
    "onehot_as_compare": onehot_as_compare,
    "lstm_unrolled": lstm_unrolled,
}


REWRITTEN_OPS = {"OneHot", "LSTM"}     # what REWRITES turn into imported ops (in the forms they cover)


def apply_rewrites(m) -> dict[str, int]:
    """Run every rewrite; -> {name: nodes rewritten} for those that changed something."""
    out = {}
    for name, fn in REWRITES.items():
        k = fn(m)
        if k:
            out[name] = k
    if out:
        _dead_code(m)
    return out


# ---------------------------------------------------------------- what is still missing
def check_operators(m) -> None:
    """Every operator the TVM importer lacks, by name and count, with where it sits, all at once.

    The branches of an unsupported If/Loop are not counted (they only matter once it folds away), but the
    missing operators inside them are named, so one run tells what --bind would leave."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    known = _get_convert_map()

    def missing(n) -> str | None:
        domain = n.domain or "ai.onnx"
        if domain in ("ai.onnx", "") and n.op_type in known:
            return None
        return n.op_type if domain == "ai.onnx" else f"{domain}.{n.op_type}"

    bad: dict[str, list[str]] = {}
    inside: set[str] = set()

    def visit(g, where):
        for n in g.node:
            key = missing(n)
            if key:
                bad.setdefault(key, []).append(where + (n.name or n.output[0]))
                inside.update(k for sub in _walk_attrs(n) if (k := missing(sub))
                              and k not in ("If", "Loop", "Scan") and k not in REWRITTEN_OPS)
            else:
                for a in n.attribute:
                    if a.HasField("g") and len(a.g.node):
                        visit(a.g, f"{where}{n.name or n.op_type}.{a.name}/")
    visit(m.graph, "")
    if bad:
        listed = "; ".join(f"{k} ({len(v)} node{'s' if len(v) > 1 else ''}) at {', '.join(v[:2])}"
                           f"{', ...' if len(v) > 2 else ''}" for k, v in sorted(bad.items()))
        hint = ""
        if "If" in bad:
            hint = (" An If on an input (a sample rate, a flag) folds away with --bind NAME=VALUE"
                    + (f"; its branches also use {', '.join(sorted(inside))}." if inside else "."))
        raise ModelError(f"the graph uses operators TVM's ONNX importer does not support: {listed}.{hint} See {DOCS}")


def ort_basic_optimize(m):
    """The graph after ONNX Runtime's basic, semantics-preserving optimizer (constant folding, BatchNormalization
    folded into its Conv, shape computations of static inputs folded); raises what ORT raises if it cannot load it."""
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "opt.onnx"
        onnx.save(m, str(src))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        so.log_severity_level = 3
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(dst))
