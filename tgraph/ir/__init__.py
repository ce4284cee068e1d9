"""tgraph's graph IR. Framework-free: imports NumPy and networkx, never torch or onnxruntime."""

from . import ops
from .core import Graph, IRError, Node, NodeList, TensorType, Value, content_hash
from .dims import DimLike, SymDim, evaluate, parse_dim, simplify
from .dtypes import DType

__all__ = [
    "DType",
    "DimLike",
    "Graph",
    "IRError",
    "Node",
    "NodeList",
    "SymDim",
    "TensorType",
    "Value",
    "content_hash",
    "evaluate",
    "ops",
    "parse_dim",
    "simplify",
]
