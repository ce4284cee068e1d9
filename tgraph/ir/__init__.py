"""tgraph's graph IR. Framework-free: imports NumPy and networkx, never torch or onnxruntime."""

from . import ops
from .core import IRError, Node, NodeList, TensorType, Value
from .dims import DimLike, SymDim, dim_max, dim_min, evaluate, parse_dim, simplify
from .dtypes import DType
from .graph import Graph
from .hashing import content_hash

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
    "dim_max",
    "dim_min",
    "evaluate",
    "ops",
    "parse_dim",
    "simplify",
]
