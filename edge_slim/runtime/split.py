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
"""
from __future__ import annotations

from dataclasses import dataclass

from .onnx_proto import Graph


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
