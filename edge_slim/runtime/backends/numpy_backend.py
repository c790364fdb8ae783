"""Pure-NumPy backend: executes the bundle's ONNX graph itself, for hosts without ONNX Runtime.

The .onnx file is decoded by `onnx_proto` (no onnx/protobuf package), then prepared once:
nodes keep the file's (topological) order, every subgraph that depends only on constants is
folded into a constant, attributes become keyword arguments, and each op is bound to a small
function from `numpy_ops.OPS` (where the numerics are described). Unsupported ops are all
reported at load time.

`run` keeps its values in a dict local to the call and constants are read-only arrays, so one
backend can serve many threads at once.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ...errors import BadInputError, ModelError
from ..onnx_proto import DTYPE_NAMES, Model, Node, load_model, onnx_dtype
from .numpy_ops import CHECKS, OPS

MIN_OPSET = 7

# ---------------------------------------------------------------------------------------
# graph preparation and execution
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    """One node, bound: call fn(*inputs, **attrs) and store the results under `outputs`."""
    fn: Callable[..., Any]
    inputs: tuple[str, ...]     # "" for an omitted optional input
    outputs: tuple[str, ...]
    attrs: dict
    label: str

    def __call__(self, values: dict) -> None:
        args = [values[n] if n else None for n in self.inputs]
        while args and args[-1] is None:  # trailing omitted inputs take the function's defaults
            args.pop()
        try:
            result = self.fn(*args, **self.attrs)
        except ModelError as e:
            raise ModelError(f"node {self.label}: {e}") from None
        except Exception as e:  # a NumPy error here means the graph is inconsistent, not the caller's input
            raise ModelError(f"node {self.label} failed: {type(e).__name__}: {e}") from None
        if not isinstance(result, tuple):
            result = (result,)
        if len(result) < len(self.outputs) and any(self.outputs[len(result):]):
            raise ModelError(f"node {self.label}: the NumPy backend computes only {len(result)} of its "
                             f"{len(self.outputs)} outputs")
        for name, value in zip(self.outputs, result):
            if name:
                values[name] = np.asarray(value)


def _node_label(node: Node, index: int) -> str:
    return f"{node.name or '#' + str(index)} ({node.op_type})"


def _op_key(node: Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def _bind(node: Node, index: int, opset: int, ops: dict | None = None) -> _Step:
    """Bind a node to its op function, checking its attributes against the function's signature."""
    fn = (ops or OPS)[node.op_type]
    label = _node_label(node, index)
    attrs = dict(node.attrs)
    if node.op_type == "Pad" and "value" in attrs:
        attrs["value_attr"] = attrs.pop("value")  # opset < 11 attribute; the input has the same name
    params = inspect.signature(fn).parameters
    unknown = [k for k in attrs if k not in params or params[k].kind != inspect.Parameter.KEYWORD_ONLY]
    if unknown:
        raise ModelError(f"node {label}: attribute(s) {', '.join(unknown)} not supported by the NumPy backend")
    if "opset" in params:
        attrs["opset"] = opset
    if "n_outputs" in params:
        attrs["n_outputs"] = len(node.outputs)
    check = CHECKS.get(node.op_type)
    problem = check(attrs) if check else None
    if problem:
        raise ModelError(f"node {label}: {problem} is not supported by the NumPy backend")
    return _Step(fn, tuple(node.inputs), tuple(node.outputs), attrs, label)


def _freeze(a: np.ndarray) -> np.ndarray:
    """Constants are shared by concurrent runs: make them contiguous and read-only."""
    a = a if a.flags.c_contiguous else a.copy()  # (np.ascontiguousarray would turn 0-d into 1-d)
    a.flags.writeable = False
    return a


class NumpyBackend:
    """Runs an ONNX bundle with NumPy alone (no ONNX Runtime, onnx or protobuf needed)."""

    name = "numpy"

    def __init__(self, bundle, threads: int | None = None, arithmetic: str = "exact"):
        """`arithmetic`: "exact" (the ONNX spec: exact int32 sums, as VNNI, ARM and TVM compute them) or
        "ort-avx2" (ONNX Runtime's saturating uint8 x int8 pairs on x86 without VNNI; see int8_avx2.py)."""
        from . import int8_avx2
        if arithmetic not in int8_avx2.ARITHMETICS:
            raise BadInputError(f"unknown arithmetic {arithmetic!r}; choose from {', '.join(int8_avx2.ARITHMETICS)}")
        self.arithmetic = arithmetic
        self._ops = {**OPS, **int8_avx2.OPS} if arithmetic == "ort-avx2" else OPS
        if bundle.manifest.get("format") != "onnx":
            raise ModelError(f"{getattr(bundle, 'path', bundle.model_path)} is a {bundle.manifest.get('format')} "
                             "artifact; the numpy backend runs ONNX bundles")
        # `threads` is accepted for interface parity: NumPy's BLAS pool is process-wide and set by
        # OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before import, so a per-backend limit is not possible.
        self.threads = threads
        self.version = np.__version__
        model = load_model(bundle.model_path)
        self._where = str(bundle.model_path)
        self.texts_at_once = False       # run_text takes several texts (checked on the first encode)
        self._batch_consts = None
        self._prepare(model)

    # -- load ------------------------------------------------------------------------------
    def _prepare(self, model: Model) -> None:
        opset = model.opsets.get("", 0)
        if opset < MIN_OPSET:
            raise ModelError(f"{self._where}: ONNX opset {opset} is too old for the NumPy backend "
                             f"(needs {MIN_OPSET} or newer)")
        g = model.graph
        unsupported = sorted({_op_key(n) for n in g.nodes if _op_key(n) not in OPS})
        if unsupported:
            raise ModelError(f"{self._where}: the NumPy backend does not support op(s): {', '.join(unsupported)}")
        consts = {k: _freeze(v) for k, v in g.initializers.items()}
        self.inputs = [vi for vi in g.inputs if vi.name not in consts]
        self.output_names = [vi.name for vi in g.outputs]
        known = set(consts) | {vi.name for vi in self.inputs}
        steps, step_nodes = [], []
        for i, node in enumerate(g.nodes):
            step = _bind(node, i, opset, self._ops)
            missing = [n for n in node.inputs if n and n not in known]
            if missing:
                raise ModelError(f"{self._where}: node {step.label} reads {', '.join(missing)}, which nothing "
                                 "before it produces (truncated or unsorted graph)")
            known.update(o for o in node.outputs if o)
            if all(n in consts for n in node.inputs if n):
                self._fold(step, consts)
            else:
                steps.append(step)
                step_nodes.append(i)
        missing = [n for n in self.output_names if n not in known]
        if missing:
            raise ModelError(f"{self._where}: graph output(s) {', '.join(missing)} are never produced")
        self._consts = consts
        self._steps = tuple(steps)
        # image once, many texts (edge_slim.runtime.split): the same steps, cut in two
        from ..split import batch_consts, plan_split
        self._split = plan_split(g)
        if self._split is not None:
            by_node = dict(zip(step_nodes, steps))
            self._image_steps = tuple(by_node[k] for k in self._split.image_nodes if k in by_node)
            self._text_steps = tuple(by_node[k] for k in self._split.text_nodes if k in by_node)
            over = batch_consts(g, self._split)
            # checked on the first encoded image (split.texts_agree), then run_text takes several texts
            self._batch_consts = None if over is None else {**consts, **{k: _freeze(v) for k, v in over.items()}}

    def _fold(self, step: _Step, consts: dict) -> None:
        """Evaluate a node whose inputs are all constants once, now (weights transposes, DQ of weights...)."""
        values = dict(consts)
        with np.errstate(all="ignore"):
            step(values)
        for name in step.outputs:
            if name:
                consts[name] = _freeze(values[name])

    # -- run -------------------------------------------------------------------------------
    def _check_feeds(self, feeds: dict, names: set[str] | None = None, rows_free: bool = False) -> dict[str, np.ndarray]:
        """`feeds` checked against the graph's inputs (or those of them in `names`); `rows_free`: any
        leading dimension (several texts at once)."""
        names = {vi.name for vi in self.inputs} if names is None else names
        extra = sorted(set(feeds) - names)
        if extra:
            raise BadInputError(f"unknown model input(s): {', '.join(extra)} (expected {', '.join(sorted(names))})")
        out = {}
        for vi in self.inputs:
            if vi.name not in names:
                continue
            if vi.name not in feeds:
                raise BadInputError(f"missing model input {vi.name!r}")
            a = np.asarray(feeds[vi.name])
            if vi.elem_type is not None and a.dtype != onnx_dtype(vi.elem_type, vi.name):
                raise BadInputError(f"input {vi.name!r} must be {DTYPE_NAMES.get(vi.elem_type)}, got {a.dtype}")
            if vi.shape is not None and (len(vi.shape) != a.ndim or any(
                    isinstance(d, int) and d >= 0 and d != s and not (rows_free and j == 0)
                    for j, (d, s) in enumerate(zip(vi.shape, a.shape)))):
                raise BadInputError(f"input {vi.name!r} must have shape {list(vi.shape)}, got {list(a.shape)}")
            out[vi.name] = a
        return out

    def split(self):
        """The Split `encode` / `run_text` use (None: the graph has no image/text cut)."""
        return self._split

    def encode(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the image part's steps: -> the cut tensors and the image-only outputs."""
        sp = self._split
        values = dict(self._consts)
        values.update(self._check_feeds(feeds, {"image"}))
        with np.errstate(all="ignore"):
            for step in self._image_steps:
                step(values)
        state = {n: values[n] for n in sp.cut + sp.image_outputs}
        if self._batch_consts is not None and not self.texts_at_once:
            from ..split import texts_agree
            tokens = next(vi for vi in self.inputs if vi.name == "tokens")
            names = list(sp.text_outputs)
            if texts_agree(lambda t: self._text_values(self._batch_consts, state, {"tokens": t}, names),
                           tokens.shape, names):
                self._consts, self.texts_at_once = self._batch_consts, True
            self._batch_consts = None
        return state

    def run_text(self, state: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the text part's steps on an encoded image: -> every graph output, as `run` returns them (with
        texts_at_once, `tokens` may hold several texts: outputs then have one row per text)."""
        feeds = self._check_feeds(feeds, {vi.name for vi in self.inputs} - {"image"}, rows_free=self.texts_at_once)
        return self._text_values(self._consts, state, feeds, self.output_names)

    def _text_values(self, consts: dict, state: dict, feeds: dict, names) -> dict[str, np.ndarray]:
        values = dict(consts)
        values.update(state)
        values.update(feeds)
        with np.errstate(all="ignore"):
            for step in self._text_steps:
                step(values)
        return {name: np.array(values[name]) for name in names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the graph on `feeds`; returns fresh arrays keyed by the graph's output names."""
        values = dict(self._consts)
        values.update(self._check_feeds(feeds))
        with np.errstate(all="ignore"):  # inf/nan propagate silently, as in ONNX Runtime
            for step in self._steps:
                step(values)
        return {name: np.array(values[name]) for name in self.output_names}
