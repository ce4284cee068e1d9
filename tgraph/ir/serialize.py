"""A graph as plain JSON plus a dict of arrays, for artifacts (no pickle: loading an
artifact must never execute code from it).

``to_json(graph)`` returns (document, arrays); ``from_json(document, arrays)`` rebuilds an
equal graph. Attribute values, shapes and metadata keep their types through tagged
objects ({"sym": "seq+1"}, {"dtype": "f32"}, {"tuple": [...]}).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tgraph.ir.core import IRError, Node, TensorType, Value
from tgraph.ir.dims import SymDim, parse_dim
from tgraph.ir.dtypes import DType
from tgraph.ir.graph import Graph

FORMAT_VERSION = 1


def encode(x: Any) -> Any:
    """A JSON-able form of an attribute or metadata value."""
    if isinstance(x, SymDim):
        return {"sym": str(x)}
    if isinstance(x, DType):
        return {"dtype": x.value}
    if isinstance(x, tuple):
        return {"tuple": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        return {"dict": [[k, encode(v)] for k, v in x.items()]}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise IRError(f"cannot serialize {type(x).__name__} value {x!r}")


def decode(x: Any) -> Any:
    if isinstance(x, list):
        return [decode(v) for v in x]
    if isinstance(x, dict):
        if "sym" in x:
            return parse_dim(x["sym"])
        if "dtype" in x:
            return DType.parse(x["dtype"])
        if "tuple" in x:
            return tuple(decode(v) for v in x["tuple"])
        if "dict" in x:
            return {k: decode(v) for k, v in x["dict"]}
        raise IRError(f"unknown tagged value {x!r}")
    return x


def _type(t: TensorType) -> dict[str, Any]:
    return {"dtype": t.dtype.value, "shape": [encode(d) for d in t.shape]}


def _untype(d: dict[str, Any]) -> TensorType:
    return TensorType(DType.parse(d["dtype"]), tuple(decode(x) for x in d["shape"]))


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = encode(v)
        except IRError:
            continue  # opaque metadata (e.g. torch pytree specs) is the caller's business
    return out


def to_json(graph: Graph) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The graph's structure as a JSON document, and its constants by initializer name."""

    def value(v: Value) -> dict[str, Any]:
        return {"name": v.name, "type": _type(v.type), "meta": _plain_meta(v.meta)}

    doc = {
        "version": FORMAT_VERSION,
        "name": graph.name,
        "inputs": [value(v) for v in graph.inputs],
        "initializers": [
            {**value(v), "trainable": v.trainable} for v in graph.initializers.values()
        ],
        "nodes": [
            {
                "op": n.op,
                "inputs": [None if v is None else v.name for v in n.inputs],
                "attrs": {k: encode(a) for k, a in n.attrs.items()},
                "meta": _plain_meta(n.meta),
                "outputs": [value(v) for v in n.outputs],
            }
            for n in graph.nodes
        ],
        "outputs": [v.name for v in graph.outputs],
    }
    arrays = {name: v.const for name, v in graph.initializers.items()}
    return doc, arrays


def from_json(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> Graph:
    """Rebuild a graph written by :func:`to_json`; raises IRError on a malformed document."""
    if doc.get("version") != FORMAT_VERSION:
        raise IRError(f"graph format version {doc.get('version')!r}, want {FORMAT_VERSION}")
    g = Graph(doc["name"])
    values: dict[str, Value] = {}

    def make(d: dict[str, Any], **kwargs: Any) -> Value:
        v = Value(d["name"], _untype(d["type"]), **kwargs)
        v.meta = {k: decode(x) for k, x in d.get("meta", {}).items()}
        g._names.add(v.name)
        values[v.name] = v
        return v

    try:
        g.inputs = [make(d) for d in doc["inputs"]]
        for d in doc["initializers"]:
            # Some weight formats store 0-d tensors as shape (1,): trust the recorded type.
            shape = tuple(_untype(d["type"]).shape)
            array = np.asarray(arrays[d["name"]]).reshape(shape)
            array.setflags(write=False)
            g.initializers[d["name"]] = make(d, const=array, trainable=d["trainable"])
        for d in doc["nodes"]:
            ins = [None if n is None else values[n] for n in d["inputs"]]
            attrs = {k: decode(a) for k, a in d["attrs"].items()}
            meta = {k: decode(x) for k, x in d["meta"].items()}
            node = Node(d["op"], ins, attrs, meta)
            node.outputs = [make(o, producer=node) for o in d["outputs"]]
            node.graph = g
            g.nodes._insert(node)
        g.outputs = [values[n] for n in doc["outputs"]]
    except KeyError as e:
        raise IRError(f"graph document refers to a missing value or field {e}") from None
    g.verify()
    return g
