"""The translation table, its registration decorator and helpers every family uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tgraph.ir import DType, Value

if TYPE_CHECKING:
    from tgraph.frontend.trace import TranslationContext

Translator = Callable[..., Any]
TRANSLATORS: dict[str, Translator] = {}

SLICE_END = 2**62  # slice ends at or past this mean "to the end"


def aten(*names: str) -> Callable[[Translator], Translator]:
    """Register a translator for ATen schema names ("aten::add.Tensor") or whole packets."""

    def deco(fn: Translator) -> Translator:
        for name in names:
            TRANSLATORS[name if "::" in name else f"aten::{name}"] = fn
        return fn

    return deco


# -- helpers ---------------------------------------------------------------------------------------


def norm_dim(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def scalar_dtype(x: Value, scalar: Any) -> DType:
    """The dtype a Python scalar takes next to tensor ``x`` (torch's promotion)."""
    if isinstance(scalar, bool):
        return x.dtype
    if isinstance(scalar, float) and not x.dtype.is_float:
        return DType.float32
    return x.dtype


def operand(ctx: TranslationContext, a: Any, dtype: DType) -> Value:
    if isinstance(a, Value):
        return ctx.cast(a, dtype)
    return ctx.const(a, dtype)


def binary(ctx: TranslationContext, op: str, a: Any, b: Any) -> Value:
    out = ctx.meta_type()
    return ctx.emit(op, [operand(ctx, a, out.dtype), operand(ctx, b, out.dtype)])


def compute_dtype(a: Any, b: Any) -> DType:
    tensors = [x for x in (a, b) if isinstance(x, Value)]
    dtypes = {x.dtype for x in tensors}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
        scalar = b if isinstance(a, Value) else a
        return scalar_dtype(tensors[0], scalar) if not isinstance(scalar, Value) else dtype
    from tgraph.ir.dtypes import promote

    return promote(*[x.dtype for x in tensors])


def compare(ctx: TranslationContext, op: str, a: Any, b: Any) -> Value:
    dtype = compute_dtype(a, b)
    return ctx.emit(op, [operand(ctx, a, dtype), operand(ctx, b, dtype)])
