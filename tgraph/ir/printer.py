"""The deterministic text form of a graph (``Graph.dump()``).

One line per node, values as ``%name``, initializers as ``@name``, tiny constants
inline. Tensors show dtype, shape and a short content hash, never addresses, so the
same graph prints byte-identically in every process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .core import Value
from .dims import SymDim
from .dtypes import DType
from .hashing import content_hash, identity_token
from .sharding import ShardSpec

if TYPE_CHECKING:
    from .graph import Graph

INLINE_MAX_ELEMENTS = 4


def format_scalar(x: Any) -> str:
    """Shortest round-trip text: float32 values in float32 digits, other floats in full."""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (np.float32, np.float16)):
        return str(x)
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    return str(int(x)) if isinstance(x, (int, np.integer)) else str(x)


def format_attr(x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ",".join(format_attr(v) for v in x) + ")"
    if isinstance(x, str):
        return repr(x)
    if isinstance(x, (SymDim, DType)) or x is None:
        return str(x)
    return format_scalar(x)


def is_inline(v: Value) -> bool:
    return (
        v.const is not None
        and not v.trainable
        and v.const.size <= INLINE_MAX_ELEMENTS
        and (v.meta.get("param") is None)
        and (v.meta.get("shard") is None)  # per-rank values: shown with their spec
    )


def format_const_inline(v: Value) -> str:
    arr = v.const
    if arr.ndim == 0:
        return f"{format_scalar(arr[()])}:{v.dtype}"
    body = ",".join(format_scalar(x) for x in arr.reshape(-1))
    return f"[{body}]:{v.type}"


def format_operand(v: Value | None) -> str:
    if v is None:
        return "_"
    if is_inline(v):
        return format_const_inline(v)
    return f"@{v.name}" if v.const is not None else f"%{v.name}"


def format_node(node, provenance: bool = False) -> str:
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    args = ", ".join(format_operand(v) for v in node.inputs)
    line = f"  {outs} = {node.op}({args})"
    if node.attrs:
        line += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items()) + "}"
    if provenance:
        where = [node.meta.get("module") or ""]
        if node.meta.get("source"):
            where.append(f"at {node.meta['source']}")
        if node.meta.get("rule"):
            where.append(f"rule {node.meta['rule']}")
        if node.meta.get("replaced"):
            where.append("replaced " + ",".join(node.meta["replaced"]))
        text = " ".join(w for w in where if w)
        if text:
            line += f"  # {text}"
    return line


def _format_output(v: Value) -> str:
    """An output; a state update (a KV cache) names the input it replaces."""
    text = format_operand(v)
    return f"{text} (updates %{v.meta['updates']})" if v.meta.get("updates") else text


def dump(graph: Graph, provenance: bool = False, contents: bool = True) -> str:
    """The graph as text; ``contents=False`` marks each constant by identity, not a hash of
    its bytes (for comparisons within one process, see ``identity_token``)."""
    key = content_hash if contents else identity_token
    lines = []
    ins = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines.append(f"graph {graph.name}({ins}) {{")
    for name in sorted(graph.initializers):
        v = graph.initializers[name]
        if is_inline(v):
            continue
        kind = "param" if v.trainable or v.meta.get("param") else "const"
        note = f"  # {ShardSpec.from_meta(v.meta['shard']).describe()}" if "shard" in v.meta else ""
        lines.append(f"  {kind} @{name}: {v.type} #{key(v.const)}{note}")
    for node in graph.nodes:
        lines.append(format_node(node, provenance))
    outs = ", ".join(_format_output(v) for v in graph.outputs)
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph) -> str:
    """The graph in Graphviz DOT: one box per node labelled with its op and output types."""
    lines = [f'digraph "{graph.name}" {{', "  node [shape=box, fontname=monospace];"]
    ids = {}
    for i, v in enumerate(graph.inputs):
        ids[id(v)] = f"in{i}"
        lines.append(f'  in{i} [label="{v.name}\\n{v.type}", shape=ellipse];')
    for i, node in enumerate(graph.nodes):
        for v in node.outputs:
            ids[id(v)] = f"n{i}"
        label = f"{node.op}\\n" + ", ".join(str(v.type) for v in node.outputs)
        lines.append(f'  n{i} [label="{label}"];')
        for v in node.inputs:
            if v is not None and id(v) in ids:
                lines.append(f"  {ids[id(v)]} -> n{i};")
    for i, v in enumerate(graph.outputs):
        lines.append(f'  out{i} [label="{v.name}", shape=ellipse];')
        if id(v) in ids:
            lines.append(f"  {ids[id(v)]} -> out{i};")
    lines.append("}")
    return "\n".join(lines)
