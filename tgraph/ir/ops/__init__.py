"""The op registry and every op definition (importing this package registers them all)."""

from . import cache, elementwise, fused, nn, quant, reduce, shape_ops  # noqa: F401  (registration side effects)
from .registry import REQUIRED, OpDef, all_ops, defop, get_op, has_op, register_op, resolve_attrs

__all__ = [
    "REQUIRED",
    "OpDef",
    "all_ops",
    "defop",
    "get_op",
    "has_op",
    "register_op",
    "resolve_attrs",
]
