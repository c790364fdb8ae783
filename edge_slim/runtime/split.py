"""Image once, many texts: cut a SlimPajama graph into its image part and the part that reads the text.

A question, caption or phrase about an image re-ran the whole graph, image tower included, although
nothing the image tower computes depends on the text. `plan_split` finds, from the graph alone (any
bundle: fp32, int8, fp16, however it was exported or quantized), which nodes depend on the image input
only and which tensors of theirs the text side reads (the cut):

    image part:  image -> cut tensors + the outputs that depend on the image only (image_embed, memory)
    text part:   cut tensors + tokens -> the other outputs (answer_logits, match_logit, box, ...)

The backends run the two parts as separate graphs (ONNX Runtime: two sessions on subgraphs written back
from the bundle's bytes, onnx_proto.write_subgraph; NumPy: its step list cut in two), so the text part
computes what the whole graph would, from the same values.

Many texts in one run (`batch_consts`, `texts_agree`): the text part of an exported graph runs one text,
with a batch of 1 written into its Reshape targets. Those targets rewritten to -1 let it run B texts at
once (the image's cut tensors keep their batch of 1 and broadcast), which costs little more than one text,
since at this size a run is mostly per-operator overhead. Allowed only where every operator of the text
part keeps the texts apart, and used only after `texts_agree` saw one run of two texts give what two runs of
one give.

int8 graphs (`quantize_per_text`): DynamicQuantizeLinear takes one scale and zero point over its whole
input, so B texts in one tensor would share them and change each other's answers. Each one feeding
MatMulIntegers is rewritten to compute what it computes for one text, per text: the range over every axis
but the first (ReduceMin/ReduceMax, widened to include 0), the scale and zero point by ONNX Runtime's
formula, QuantizeLinear along axis 0; and since MatMulInteger takes one zero point for A, each of its
matmuls runs with none and subtracts zp * colsum(W) (the column sums of the constant weight) in int32,
which is the same integer sum. A text's numbers are then those of a run of that text alone (bit for bit on
ONNX Runtime: tests/test_split.py), at about 15 more small operators per quantized input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .onnx_proto import Graph, Node


@dataclass(frozen=True)
class Split:
    image_nodes: tuple[int, ...]      # node indices of the image part, in graph order
    text_nodes: tuple[int, ...]       # node indices of the text part, in graph order
    cut: tuple[str, ...]              # image-part tensors the text part reads
    image_outputs: tuple[str, ...]    # graph outputs that depend on the image only
    text_outputs: tuple[str, ...]     # the other graph outputs

    def outputs(self, names, text_out: dict, state: dict) -> dict:
        """Every graph output in `names`, as a whole-graph run returns them: the text part's, then the image
        part's from the encoded state."""
        return {n: text_out[n] if n in text_out else state[n] for n in names}


def plan_split(g: Graph, image: str = "image", text: str = "tokens") -> Split | None:
    """The cut of `g` between its `image` input and everything that reads `text`; None when the graph
    has not both inputs, or no output depends on the text (nothing to gain)."""
    names = {vi.name for vi in g.inputs}
    if image not in names or text not in names:
        return None
    dep: dict[str, frozenset] = {image: frozenset([image]), text: frozenset([text])}
    node_dep = []
    for n in g.nodes:
        d = frozenset().union(*(dep.get(i, frozenset()) for i in n.inputs if i))
        node_dep.append(d)
        for o in n.outputs:
            if o:
                dep[o] = d
    producer = {o: k for k, n in enumerate(g.nodes) for o in n.outputs if o}
    outputs = [vi.name for vi in g.outputs]
    image_outputs = tuple(o for o in outputs if text not in dep.get(o, ()))
    text_outputs = tuple(o for o in outputs if text in dep.get(o, ()))
    if not text_outputs:
        return None
    image_only = {t for t, d in dep.items() if d == {image} and t != image}
    text_nodes = _needed(g, producer, text_outputs, stop=image_only)
    cut = tuple(sorted({i for k in text_nodes for i in g.nodes[k].inputs if i in image_only}))
    image_nodes = _needed(g, producer, cut + image_outputs, stop=set())
    if any(text in node_dep[k] for k in image_nodes):     # cannot happen: the cut only holds image-only tensors
        raise AssertionError("the image part reads the text")
    return Split(image_nodes, text_nodes, cut, image_outputs, text_outputs)


def _needed(g: Graph, producer: dict[str, int], targets, stop: set[str]) -> tuple[int, ...]:
    """Indices of the nodes that compute `targets`, walking back until a tensor in `stop` (or a graph
    input or initializer, which have no producer)."""
    seen: set[int] = set()
    todo = [t for t in targets if t not in stop]
    while todo:
        t = todo.pop()
        k = producer.get(t)
        if k is None or k in seen:
            continue
        seen.add(k)
        todo.extend(i for i in g.nodes[k].inputs if i and i not in stop)
    return tuple(sorted(seen))


# Operators that compute each leading-axis item from that item alone (with the attribute and input checks
# in _keeps_texts_apart); anything else, e.g. DynamicQuantizeLinear, keeps a text part at one text per run.
_ROWWISE = frozenset("""Add Sub Mul Div Pow Sqrt Reciprocal Neg Abs Exp Log Erf Tanh Sigmoid Relu Gelu LeakyRelu
    Softplus HardSigmoid Clip Round Floor Ceil Cast Equal Less Greater LessOrEqual GreaterOrEqual Not And Or
    Where Min Max Identity Constant MatMul MatMulInteger DequantizeLinear QuantizeLinear""".split())
_AXIS_OPS = frozenset("Softmax LogSoftmax LayerNormalization Concat".split())
_REDUCE_OPS = frozenset("ReduceSum ReduceMean ReduceMax ReduceMin ReduceL2 ReduceProd".split())


@dataclass(frozen=True)
class TextRewrite:
    """The text part with its DynamicQuantizeLinears made per text (quantize_per_text)."""
    nodes: tuple                          # kept nodes as indices into the graph's nodes, new ones as Node
    initializers: dict[str, np.ndarray]   # the constants the new nodes read


def batch_consts(g: Graph, sp: Split, text: str = "tokens",
                 rewrite: TextRewrite | None = None) -> dict[str, np.ndarray] | None:
    """New values for the text part's Reshape targets ({initializer: shape with -1 for the leading 1}) so
    that it runs several texts at once; None when an operator of the text part (or of `rewrite`'s, when
    given) may mix the texts or a Reshape target is not a constant with a leading batch of 1."""
    consts = {**g.initializers, **rewrite.initializers} if rewrite else g.initializers
    tin = next((vi for vi in g.inputs if vi.name == text), None)
    if tin is None or not tin.shape or tin.shape[0] != 1:
        return None
    out: dict[str, np.ndarray] = {}
    for k in (rewrite.nodes if rewrite else sp.text_nodes):
        n = k if isinstance(k, Node) else g.nodes[k]
        if n.domain not in ("", "ai.onnx"):
            return None
        if n.op_type == "Reshape":
            t = consts.get(n.inputs[1]) if len(n.inputs) > 1 else None
            if t is None or t.ndim != 1 or not len(t) or int(t[0]) != 1 or (t[1:] <= 0).any():
                return None
            out[n.inputs[1]] = np.concatenate([[-1], t[1:]]).astype(t.dtype)
        elif not _keeps_texts_apart(n, consts):
            return None
    return out


def dynamic_quantize_inputs(g: Graph, sp: Split) -> list[str]:
    """The inputs of the text part's DynamicQuantizeLinears (quantize_per_text needs their ranks)."""
    return [g.nodes[k].inputs[0] for k in sp.text_nodes if g.nodes[k].op_type == "DynamicQuantizeLinear"
            and g.nodes[k].domain in ("", "ai.onnx")]


FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def quantize_per_text(g: Graph, sp: Split, ranks: dict[str, int]) -> TextRewrite | None:
    """The text part with every DynamicQuantizeLinear computed per text (the module docstring); `ranks`
    gives the rank of each one's input (dynamic_quantize_inputs). None when one of them feeds anything but
    MatMulIntegers with a constant weight (their A and its zero point) and Muls of its scale by a constant,
    or its input has no axis but the texts'."""
    consts = g.initializers
    readers: dict[str, list[int]] = {}
    for k in sp.text_nodes:
        for i in g.nodes[k].inputs:
            readers.setdefault(i, []).append(k)
    out_of = {o: k for k in sp.text_nodes for o in g.nodes[k].outputs}
    inits = {"per_text.zero": np.array(0, np.float32), "per_text.255": np.array(255, np.float32),
             "per_text.tiny": np.array(FLT_MIN, np.float32)}
    replaced: dict[int, list[Node]] = {}
    for k in sp.text_nodes:
        n = g.nodes[k]
        if n.op_type != "DynamicQuantizeLinear" or n.domain not in ("", "ai.onnx"):
            continue
        x, (y, sc, zp) = n.inputs[0], (list(n.outputs) + ["", ""])[:3]
        rank = ranks.get(x)
        mms = [g.nodes[m] for m in readers.get(y, [])]
        if rank is None or rank < 2 or not mms or any(
                m.op_type != "MatMulInteger" or m.inputs[0] != y or len(m.inputs) < 3 or m.inputs[2] != zp
                or m.inputs[1] not in consts or (len(m.inputs) > 3 and m.inputs[3] and m.inputs[3] not in consts)
                for m in mms):
            return None
        if any(g.nodes[m].op_type != "MatMulInteger" for m in readers.get(zp, [])):
            return None
        for m in readers.get(sc, []):
            a = g.nodes[m]
            if a.op_type != "Mul" or not any(i in consts for i in a.inputs if i != sc):
                return None
        p = f"{x}.per_text"
        inits[f"{p}.axes"] = np.arange(1, rank, dtype=np.int64)
        nodes = [
            Node("ReduceMin", [x, f"{p}.axes"], [f"{p}.min"], attrs={"keepdims": 1}),
            Node("ReduceMax", [x, f"{p}.axes"], [f"{p}.max"], attrs={"keepdims": 1}),
            Node("Min", [f"{p}.min", "per_text.zero"], [f"{p}.lo"]),        # the range widened to include 0
            Node("Max", [f"{p}.max", "per_text.zero"], [f"{p}.hi"]),
            Node("Sub", [f"{p}.hi", f"{p}.lo"], [f"{p}.span"]),
            Node("Div", [f"{p}.span", "per_text.255"], [f"{p}.scale0"]),
            # ORT takes scale 1 for an all-zero input; any positive scale gives it the same zeros
            Node("Max", [f"{p}.scale0", "per_text.tiny"], [sc or f"{p}.scale"]),
            Node("Neg", [f"{p}.lo"], [f"{p}.nlo"]),
            Node("Div", [f"{p}.nlo", sc or f"{p}.scale"], [f"{p}.zpf"]),      # 0 - lo / scale, in [0, 255]
            Node("Round", [f"{p}.zpf"], [f"{p}.zpr"]),
            Node("Cast", [f"{p}.zpr"], [f"{p}.zp"], attrs={"to": 2}),
            Node("Squeeze", [sc or f"{p}.scale", f"{p}.axes"], [f"{p}.scale1"]),
            Node("Squeeze", [f"{p}.zp", f"{p}.axes"], [f"{p}.zp1"]),
            Node("QuantizeLinear", [x, f"{p}.scale1", f"{p}.zp1"], [y], attrs={"axis": 0}),
            Node("Cast", [f"{p}.zp"], [f"{p}.zp32"], attrs={"to": 6}),
        ]
        for m in mms:
            w = consts[m.inputs[1]].astype(np.int32)
            if len(m.inputs) > 3 and m.inputs[3]:
                w = w - consts[m.inputs[3]].astype(np.int32)
            o = m.outputs[0]
            inits[f"{o}.colsum"] = w.sum(axis=-2, dtype=np.int32)
            replaced.setdefault(out_of[o], []).extend([
                Node("MatMulInteger", [y, m.inputs[1]] + (["", m.inputs[3]] if len(m.inputs) > 3 and m.inputs[3]
                                                         else []), [f"{o}.per_text"]),
                Node("Mul", [f"{p}.zp32", f"{o}.colsum"], [f"{o}.zp_colsum"]),
                Node("Sub", [f"{o}.per_text", f"{o}.zp_colsum"], [o]),
            ])
        replaced[k] = nodes
    if not replaced:
        return None
    return TextRewrite(tuple(x for k in sp.text_nodes for x in replaced.get(k, [k])), inits)


def _keeps_texts_apart(n, consts: dict[str, np.ndarray]) -> bool:
    op, a = n.op_type, n.attrs

    def const_axes(i: int) -> np.ndarray | None:
        v = consts.get(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None
        return None if v is None else np.atleast_1d(v)
    if op in _ROWWISE:
        return True
    if op in _AXIS_OPS:
        return int(a.get("axis", -1)) != 0
    if op == "Transpose":
        return bool(a.get("perm")) and int(a["perm"][0]) == 0
    if op == "Gemm":
        return not a.get("transA", 0)
    if op == "Gather":       # an embedding lookup (constant table) or a pick along an inner axis
        return n.inputs[0] in consts or int(a.get("axis", 0)) != 0
    if op in ("Unsqueeze", "Squeeze") or op in _REDUCE_OPS:
        axes = a.get("axes")
        axes = np.atleast_1d(axes) if axes is not None else const_axes(1)
        return axes is not None and len(axes) > 0 and not (axes == 0).any()
    if op == "Expand":
        shape = const_axes(1)
        return shape is not None and len(shape) > 0 and int(shape[0]) == 1
    return False


def texts_agree(run_text: Callable[[np.ndarray], dict[str, np.ndarray]], tokens_shape, names,
                run_one: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None) -> bool:
    """Whether one run of two texts gives, output by output, what two runs of one give (the check a
    batched text part must pass before a session uses it). `run_text(tokens)` runs the text part on a
    probe image's state; `run_one`, when given, makes the runs of one text (the text part before a
    rewrite), else run_text does."""
    length = int(tokens_shape[-1])
    rows = np.array([[1 + i % 2 for i in range(length)],
                     [1 if i < max(1, length // 2) else 0 for i in range(length)]], np.int64)
    try:
        both = run_text(rows)
        one = [(run_one or run_text)(rows[i:i + 1]) for i in range(2)]
    except Exception:   # a runtime refusing the batch (a Concat with the image's batch of 1, ...) is a no
        return False
    for name in names:
        b = np.asarray(both[name])
        if b.shape[:1] != (2,):
            return False
        for i in range(2):
            if not np.allclose(b[i:i + 1], one[i][name], rtol=1e-4, atol=1e-5, equal_nan=True):
                return False
    return True
