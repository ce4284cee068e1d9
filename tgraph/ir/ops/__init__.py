"""The op registry and every op definition (importing this package registers them all)."""

from . import (  # noqa: F401  (registration side effects)
    cache,
    collective,
    elementwise,
    fused,
    moe,
    nn,
    pool,
    quant,
    reduce,
    resize,
    scatter,
    shape_ops,
)
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
