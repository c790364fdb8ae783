"""A minimal reader for ONNX `ModelProto` files: protobuf wire format in pure Python + NumPy.

The NumPy backend must run where neither `onnx` nor `protobuf` is installed, so this module
decodes just what execution needs (opsets, nodes with their attributes, initializers, graph
inputs/outputs) straight from the bytes. Field numbers follow onnx/onnx.proto. Bulk tensor
data is decoded with np.frombuffer, so a multi-megabyte model parses in milliseconds.

Every malformed byte sequence (truncation, bad wire type, overlong varint, a tensor whose
data does not match its dims) raises ModelError, never an IndexError or struct.error.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ModelError

# TensorProto.DataType -> NumPy dtype (little-endian, as ONNX stores raw_data).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),   # FLOAT
    2: np.dtype("u1"),    # UINT8
    3: np.dtype("i1"),    # INT8
    4: np.dtype("<u2"),   # UINT16
    5: np.dtype("<i2"),   # INT16
    6: np.dtype("<i4"),   # INT32
    7: np.dtype("<i8"),   # INT64
    9: np.dtype("?"),     # BOOL
    10: np.dtype("<f2"),  # FLOAT16
    11: np.dtype("<f8"),  # DOUBLE
    12: np.dtype("<u4"),  # UINT32
    13: np.dtype("<u8"),  # UINT64
}
DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
               8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
               14: "complex64", 15: "complex128", 16: "bfloat16"}

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def onnx_dtype(code: int, what: str = "tensor") -> np.dtype:
    """The NumPy dtype for an ONNX TensorProto.DataType code; ModelError for types we cannot hold."""
    try:
        return DTYPES[code].newbyteorder("=")
    except KeyError:
        name = DTYPE_NAMES.get(code, f"code {code}")
        raise ModelError(f"{what}: ONNX data type {name} is not supported by the NumPy backend") from None


@dataclass
class ValueInfo:
    name: str
    elem_type: int | None = None            # TensorProto.DataType, None when not a tensor type
    shape: tuple | None = None              # ints, dim_param strings, or None per unknown dim


@dataclass
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    name: str = ""
    domain: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    # where each message lies in Model.raw, so a part of the graph can be written out again byte for
    # byte (write_subgraph) without an onnx or protobuf package
    node_spans: list[tuple[int, int]] = field(default_factory=list)
    initializer_spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    value_spans: dict[str, tuple[int, int]] = field(default_factory=dict)   # graph inputs and outputs


@dataclass
class Model:
    ir_version: int
    opsets: dict[str, int]                  # domain ("" = ai.onnx) -> version
    graph: Graph
    producer: str = ""
    raw: bytes = b""                        # the serialized ModelProto the spans point into
    opset_spans: list[tuple[int, int]] = field(default_factory=list)
    function_spans: list[tuple[int, int]] = field(default_factory=list)


class _Reader:
    """Walks protobuf messages in one bytes buffer; `where` names the file in error messages."""

    def __init__(self, buf: bytes, where: str):
        self.buf = buf
        self.where = where

    def fail(self, msg: str) -> ModelError:
        return ModelError(f"{self.where}: not a valid ONNX model ({msg})")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf, result, shift = self.buf, 0, 0
        while True:
            if pos >= end:
                raise self.fail("truncated varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.fail("varint longer than 10 bytes")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
        """Yield (field number, wire type, value) for one message spanning buf[start:end].

        Varints come back as unsigned ints, fixed32/64 as bytes, length-delimited fields as a
        (start, end) span into the buffer so nested messages are decoded without copying.
        """
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            num, wt = key >> 3, key & 7
            if num == 0:
                raise self.fail("field number 0")
            if wt == _VARINT:
                val, pos = self.varint(pos, end)
            elif wt == _LEN:
                n, pos = self.varint(pos, end)
                if pos + n > end:
                    raise self.fail("truncated length-delimited field")
                val = (pos, pos + n)
                pos += n
            elif wt == _I32 or wt == _I64:
                size = 4 if wt == _I32 else 8
                if pos + size > end:
                    raise self.fail("truncated fixed-width field")
                val = self.buf[pos:pos + size]
                pos += size
            else:
                raise self.fail(f"unsupported wire type {wt}")
            yield num, wt, val

    # -- scalar helpers -------------------------------------------------------------------
    def string(self, span: tuple[int, int]) -> str:
        try:
            return self.buf[span[0]:span[1]].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string field is not UTF-8") from None

    def packed_varints(self, span: tuple[int, int]) -> list[int]:
        out, pos, end = [], span[0], span[1]
        while pos < end:
            v, pos = self.varint(pos, end)
            out.append(v)
        return out

    def ints(self, wt: int, val, into: list[int]) -> None:
        """Append a repeated int64 field's values, accepting both packed and unpacked encodings."""
        if wt == _VARINT:
            into.append(_signed64(val))
        elif wt == _LEN:
            into.extend(_signed64(v) for v in self.packed_varints(val))
        else:
            raise self.fail(f"wire type {wt} for an integer field")

    def floats(self, wt: int, val, into: list, fmt: str) -> None:
        """Append a repeated float/double field's values (packed or unpacked)."""
        size = np.dtype(fmt).itemsize
        if wt == _LEN:
            chunk = self.buf[val[0]:val[1]]
            if len(chunk) % size:
                raise self.fail("packed float field with a partial element")
            into.extend(np.frombuffer(chunk, dtype=fmt).tolist())
        elif (wt == _I32 and size == 4) or (wt == _I64 and size == 8):
            into.append(float(np.frombuffer(val, dtype=fmt)[0]))
        else:
            raise self.fail(f"wire type {wt} for a float field")

    def expect(self, wt: int, want: int, what: str) -> None:
        if wt != want:
            raise self.fail(f"{what} has wire type {wt}, expected {want}")


def _signed64(v: int) -> int:
    """Protobuf int64/int32 fields carry negatives as 64-bit two's complement varints."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


# -- messages ------------------------------------------------------------------------------
def _tensor(r: _Reader, span: tuple[int, int], what: str = "tensor") -> tuple[str, np.ndarray]:
    """Decode a TensorProto into (name, array)."""
    dims: list[int] = []
    data_type, name, raw = 0, "", None
    f32: list[float] = []
    f64: list[float] = []
    i32: list[int] = []
    i64: list[int] = []
    u64: list[int] = []
    external = False
    for num, wt, val in r.fields(*span):
        if num == 1:
            r.ints(wt, val, dims)
        elif num == 2:
            r.expect(wt, _VARINT, "TensorProto.data_type")
            data_type = _signed64(val)
        elif num == 8:
            r.expect(wt, _LEN, "TensorProto.name")
            name = r.string(val)
        elif num == 9:
            r.expect(wt, _LEN, "TensorProto.raw_data")
            raw = val
        elif num == 4:
            r.floats(wt, val, f32, "<f4")
        elif num == 10:
            r.floats(wt, val, f64, "<f8")
        elif num == 5:
            r.ints(wt, val, i32)
        elif num == 7:
            r.ints(wt, val, i64)
        elif num == 11:
            if wt == _VARINT:
                u64.append(val)
            else:
                r.expect(wt, _LEN, "TensorProto.uint64_data")
                u64.extend(r.packed_varints(val))
        elif num == 14:
            external = val == 1
        elif num == 13:
            external = True
        elif num in (3, 6):
            raise ModelError(f"{r.where}: {what} {name!r} uses segments or string data, which the NumPy "
                             "backend does not support")
    label = f"{what} {name!r}"
    if external:
        raise ModelError(f"{r.where}: {label} keeps its data in an external file; re-save the model with "
                         "the weights inside (onnx.save(..., save_as_external_data=False))")
    if any(d < 0 for d in dims):
        raise r.fail(f"{label} has a negative dimension")
    dtype = onnx_dtype(data_type, f"{r.where}: {label}")
    count = math.prod(dims)  # Python ints: corrupt dims must not wrap around to a plausible size
    if raw is not None:
        nbytes = raw[1] - raw[0]
        if nbytes != count * dtype.itemsize:
            raise r.fail(f"{label} has {nbytes} bytes of data for shape {dims} of {dtype.name}")
        arr = np.frombuffer(r.buf, dtype=dtype.newbyteorder("<"), count=count, offset=raw[0])
        arr = arr.astype(dtype, copy=True)  # aligned, native byte order, independent of the file buffer
    else:
        arr = _typed_data(r, label, data_type, dtype, count, f32, f64, i32, i64, u64)
    return name, arr.reshape(dims)


def _typed_data(r: _Reader, label: str, data_type: int, dtype: np.dtype, count: int,
                f32: list, f64: list, i32: list, i64: list, u64: list) -> np.ndarray:
    """The array for a tensor stored in the typed repeated fields instead of raw_data."""
    if data_type == 1:
        values = np.array(f32, dtype=np.float32)
    elif data_type == 11:
        values = np.array(f64, dtype=np.float64)
    elif data_type == 7:
        values = np.array(i64, dtype=np.int64)
    elif data_type in (12, 13):
        values = np.array(u64, dtype=np.uint64).astype(dtype)
    elif data_type == 10:  # float16 bit patterns, one per int32
        values = np.array(i32, dtype=np.int64).astype(np.uint16).view(np.float16)
    else:  # int32, int16, uint16, int8, uint8, bool all travel in int32_data
        values = np.array(i32, dtype=np.int64).astype(dtype)
    if values.size != count:
        raise r.fail(f"{label} has {values.size} values for {count} elements")
    return values.astype(dtype, copy=False)


def _attribute(r: _Reader, span: tuple[int, int], node: str) -> tuple[str, Any]:
    """Decode an AttributeProto into (name, Python value)."""
    name, atype = "", 0
    present: dict[int, Any] = {}
    floats: list[float] = []
    ints: list[int] = []
    strings: list[str] = []
    tensors: list[np.ndarray] = []
    for num, wt, val in r.fields(*span):
        if num == 1:
            name = r.string(val)
        elif num == 20:
            atype = _signed64(val)
        elif num == 2:
            r.expect(wt, _I32, "AttributeProto.f")
            present[2] = struct.unpack("<f", val)[0]
        elif num == 3:
            r.expect(wt, _VARINT, "AttributeProto.i")
            present[3] = _signed64(val)
        elif num == 4:
            r.expect(wt, _LEN, "AttributeProto.s")
            present[4] = r.buf[val[0]:val[1]]
        elif num == 5:
            r.expect(wt, _LEN, "AttributeProto.t")
            present[5] = _tensor(r, val, f"attribute tensor of {node}")[1]
        elif num == 7:
            r.floats(wt, val, floats, "<f4")
            present[7] = floats
        elif num == 8:
            r.ints(wt, val, ints)
            present[8] = ints
        elif num == 9:
            r.expect(wt, _LEN, "AttributeProto.strings")
            strings.append(r.string(val))
            present[9] = strings
        elif num == 10:
            tensors.append(_tensor(r, val, f"attribute tensor of {node}")[1])
            present[10] = tensors
        elif num in (6, 11, 22, 23, 14, 15):
            present[num] = _Unsupported(num)  # subgraphs, sparse tensors, type protos: not executable here
        elif num == 21:
            raise ModelError(f"{r.where}: node {node} has a function attribute reference, which only "
                             "appears inside functions")
    # AttributeType -> field number; old files omit `type`, so fall back to the field present.
    by_type = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8, 8: 9, 9: 10, 10: 11, 11: 22, 12: 23, 13: 14, 14: 15}
    fnum = by_type.get(atype)
    if fnum is None:
        fnum = next(iter(present), None)
    if fnum is None:  # an empty list attribute has no field on the wire
        empty = {6: [], 7: [], 8: []}
        return name, empty.get(atype, [])
    value = present.get(fnum, [] if fnum in (7, 8, 9, 10) else None)
    if fnum == 4 and isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # keep raw bytes; no op we run reads a binary string attribute
    return name, value


@dataclass(frozen=True)
class _Unsupported:
    """Placeholder for attribute kinds we skip (subgraphs etc.); the field number says which."""
    field_number: int


def _node(r: _Reader, span: tuple[int, int], index: int) -> Node:
    n = Node(op_type="", inputs=[], outputs=[])
    attr_spans = []
    for num, wt, val in r.fields(*span):
        if wt != _LEN:
            continue
        if num == 1:
            n.inputs.append(r.string(val))
        elif num == 2:
            n.outputs.append(r.string(val))
        elif num == 3:
            n.name = r.string(val)
        elif num == 4:
            n.op_type = r.string(val)
        elif num == 7:
            n.domain = r.string(val)
        elif num == 5:
            attr_spans.append(val)
    label = n.name or f"#{index} ({n.op_type})"
    for s in attr_spans:
        key, value = _attribute(r, s, label)
        n.attrs[key] = value
    if not n.op_type:
        raise r.fail(f"node {label} has no op_type")
    return n


def _value_info(r: _Reader, span: tuple[int, int]) -> ValueInfo:
    vi = ValueInfo(name="")
    for num, wt, val in r.fields(*span):
        if num == 1 and wt == _LEN:
            vi.name = r.string(val)
        elif num == 2 and wt == _LEN:
            for tnum, twt, tval in r.fields(*val):
                if tnum == 1 and twt == _LEN:  # TypeProto.tensor_type
                    vi.elem_type, vi.shape = _tensor_type(r, tval)
    return vi


def _tensor_type(r: _Reader, span: tuple[int, int]) -> tuple[int | None, tuple | None]:
    elem, shape = None, None
    for num, wt, val in r.fields(*span):
        if num == 1 and wt == _VARINT:
            elem = _signed64(val)
        elif num == 2 and wt == _LEN:
            dims = []
            for dnum, dwt, dval in r.fields(*val):
                if dnum == 1 and dwt == _LEN:
                    dims.append(_dimension(r, dval))
            shape = tuple(dims)
    return elem, shape


def _dimension(r: _Reader, span: tuple[int, int]) -> int | str | None:
    dim: int | str | None = None
    for num, wt, val in r.fields(*span):
        if num == 1 and wt == _VARINT:
            dim = _signed64(val)
        elif num == 2 and wt == _LEN:
            dim = r.string(val)
    return dim


def _graph(r: _Reader, span: tuple[int, int]) -> Graph:
    g = Graph(name="", nodes=[], initializers={}, inputs=[], outputs=[])
    for num, wt, val in r.fields(*span):
        if wt != _LEN:
            continue
        if num == 1:
            g.nodes.append(_node(r, val, len(g.nodes)))
            g.node_spans.append(val)
        elif num == 2:
            g.name = r.string(val)
        elif num == 5:
            name, arr = _tensor(r, val, "initializer")
            g.initializers[name] = arr
            g.initializer_spans[name] = val
        elif num == 15:
            raise ModelError(f"{r.where}: the graph has sparse initializers, which the NumPy backend does not "
                             "support")
        elif num == 11 or num == 12:
            vi = _value_info(r, val)
            (g.inputs if num == 11 else g.outputs).append(vi)
            g.value_spans[vi.name] = val
    return g


def parse_model(data: bytes, where: str = "model") -> Model:
    """Decode serialized ModelProto bytes; ModelError if they are not a usable ONNX model."""
    r = _Reader(bytes(data), where)
    ir_version, producer, opsets, graph = 0, "", {}, None
    opset_spans, function_spans = [], []
    for num, wt, val in r.fields(0, len(r.buf)):
        if num == 1 and wt == _VARINT:
            ir_version = _signed64(val)
        elif num == 2 and wt == _LEN:
            producer = r.string(val)
        elif num == 8 and wt == _LEN:
            domain, version = "", 1
            for onum, owt, oval in r.fields(*val):
                if onum == 1 and owt == _LEN:
                    domain = r.string(oval)
                elif onum == 2 and owt == _VARINT:
                    version = _signed64(oval)
            opsets["" if domain == "ai.onnx" else domain] = version
            opset_spans.append(val)
        elif num == 7 and wt == _LEN:
            graph = _graph(r, val)
        elif num == 25 and wt == _LEN:
            function_spans.append(val)
    if graph is None:
        raise r.fail("no graph")
    if ir_version <= 0:
        raise r.fail("no ir_version")
    if not graph.outputs:
        raise r.fail("the graph has no outputs")
    return Model(ir_version=ir_version, opsets=opsets, graph=graph, producer=producer, raw=r.buf,
                 opset_spans=opset_spans, function_spans=function_spans)


def load_model(path: str | Path) -> Model:
    """Read and decode an .onnx file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read the model ({e.strerror or e})") from None
    return parse_model(data, str(path))


# -- writing a part of a graph back out -------------------------------------------------------------
def _varint_bytes(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _len_field(num: int, payload: bytes) -> bytes:
    return _varint_bytes(num << 3 | _LEN) + _varint_bytes(len(payload)) + payload


def dtype_code(dtype) -> int:
    """The ONNX TensorProto.DataType of a NumPy dtype (the inverse of onnx_dtype)."""
    dt = np.dtype(dtype).newbyteorder("=")
    for code, d in DTYPES.items():
        if d.newbyteorder("=") == dt:
            return code
    raise ModelError(f"no ONNX data type for {dt}")


def tensor_value_info(name: str, elem_type: int | None = None, shape: tuple[int | str, ...] | None = None) -> bytes:
    """A serialized ValueInfoProto: a tensor of `elem_type` (shape None: unknown rank; a str dimension is a
    symbolic one, dim_param), or with no elem_type a bare name (no type; ONNX Runtime accepts such graph
    outputs and infers them)."""
    if elem_type is None:
        return _len_field(1, name.encode())
    tt = _varint_bytes(1 << 3 | _VARINT) + _varint_bytes(elem_type)
    if shape is not None:
        dims = b"".join(_len_field(1, _len_field(2, d.encode()) if isinstance(d, str)
                                   else _varint_bytes(1 << 3 | _VARINT) + _varint_bytes(int(d))) for d in shape)
        tt += _len_field(2, dims)
    return _len_field(1, name.encode()) + _len_field(2, _len_field(1, tt))


def tensor_proto(name: str, value: np.ndarray) -> bytes:
    """A serialized TensorProto of `value` (dims, data_type, name, raw_data little-endian)."""
    a = np.ascontiguousarray(value)
    code = dtype_code(a.dtype)
    out = b"".join(_varint_bytes(1 << 3 | _VARINT) + _varint_bytes(int(d)) for d in a.shape)
    out += _varint_bytes(2 << 3 | _VARINT) + _varint_bytes(code) + _len_field(8, name.encode())
    return out + _len_field(9, a.astype(DTYPES[code], copy=False).tobytes())


def _attribute_proto(name: str, v: Any) -> bytes:
    """A serialized AttributeProto of an int, float, str or list of ints (what node_proto's callers set)."""
    head = _len_field(1, name.encode())
    if isinstance(v, bool) or isinstance(v, (int, np.integer)):
        return head + _varint_bytes(3 << 3 | _VARINT) + _varint_bytes(int(v) & (1 << 64) - 1) + \
            _varint_bytes(20 << 3 | _VARINT) + _varint_bytes(2)
    if isinstance(v, (float, np.floating)):
        return head + _varint_bytes(2 << 3 | _I32) + struct.pack("<f", float(v)) + \
            _varint_bytes(20 << 3 | _VARINT) + _varint_bytes(1)
    if isinstance(v, str):
        return head + _len_field(4, v.encode()) + _varint_bytes(20 << 3 | _VARINT) + _varint_bytes(3)
    if isinstance(v, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in v):
        ints = b"".join(_varint_bytes(int(i) & (1 << 64) - 1) for i in v)
        return head + _len_field(8, ints) + _varint_bytes(20 << 3 | _VARINT) + _varint_bytes(7)
    raise ModelError(f"attribute {name}: cannot write a {type(v).__name__}")


def node_proto(n: Node) -> bytes:
    """A serialized NodeProto of `n` (a node made in code rather than read from a file)."""
    out = b"".join(_len_field(1, i.encode()) for i in n.inputs) + b"".join(_len_field(2, o.encode()) for o in n.outputs)
    out += (_len_field(3, n.name.encode()) if n.name else b"") + _len_field(4, n.op_type.encode())
    out += b"".join(_len_field(5, _attribute_proto(k, v)) for k, v in n.attrs.items())
    return out + (_len_field(7, n.domain.encode()) if n.domain else b"")


def write_subgraph(model: Model, nodes: list[int | Node], inputs: list[str | bytes], outputs: list[str | bytes],
                   name: str = "part", replace: dict[str, np.ndarray] | None = None) -> bytes:
    """A serialized ModelProto holding nodes `nodes` of `model` in order -- an index into model.graph.nodes is
    copied byte for byte, a Node is written anew (node_proto) --, the initializers they read, and the given
    graph inputs/outputs: a name copies the original graph's ValueInfo, bytes are a ValueInfoProto
    (tensor_value_info) for a tensor that was internal. `replace` gives new values for some initializers, or
    new initializers the written nodes read (written anew; every other one is copied byte for byte)."""
    replace = replace or {}
    g, raw = model.graph, model.raw
    if not raw:
        raise ModelError("this model was not parsed from bytes; it cannot be written back")

    def value(v: str | bytes) -> bytes:
        if isinstance(v, bytes):
            return v
        if v not in g.value_spans:
            raise ModelError(f"{v!r} is not a graph input or output; pass its ValueInfo")
        a, b = g.value_spans[v]
        return raw[a:b]

    read = {i for k in nodes for i in (k.inputs if isinstance(k, Node) else g.nodes[k].inputs)}
    parts = [_len_field(1, node_proto(k) if isinstance(k, Node) else raw[slice(*g.node_spans[k])]) for k in nodes]
    parts.append(_len_field(2, name.encode()))
    parts += [_len_field(5, tensor_proto(n, replace[n]) if n in replace else raw[slice(*g.initializer_spans[n])])
              for n in g.initializer_spans if n in read]
    parts += [_len_field(5, tensor_proto(n, v)) for n, v in replace.items() if n in read and n not in g.initializer_spans]
    parts += [_len_field(11, value(v)) for v in inputs] + [_len_field(12, value(v)) for v in outputs]
    head = _varint_bytes(1 << 3 | _VARINT) + _varint_bytes(model.ir_version) + _len_field(2, model.producer.encode())
    opsets = b"".join(_len_field(8, raw[slice(*s)]) for s in model.opset_spans)
    funcs = b"".join(_len_field(25, raw[slice(*s)]) for s in model.function_spans)
    return head + opsets + _len_field(7, b"".join(parts)) + funcs
