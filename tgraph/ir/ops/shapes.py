"""Shape arithmetic shared by the op definitions (works on symbolic dims)."""

from __future__ import annotations

from collections.abc import Sequence

from tgraph.ir.core import IRError
from tgraph.ir.dims import DimLike, SymDim, simplify


def norm_axis(axis: int, rank: int, op: str = "") -> int:
    """``axis`` in ``[0, rank)``; negative axes count from the end."""
    if not -rank <= axis < max(rank, 1):
        raise IRError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def norm_axes(axes: Sequence[int], rank: int, op: str = "") -> tuple[int, ...]:
    return tuple(sorted({norm_axis(a, rank, op) for a in axes}))


def broadcast_dim(a: DimLike, b: DimLike, op: str = "") -> DimLike:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    # torch.export guarantees shapes agree at run time: a symbol meeting a constant is that constant.
    if isinstance(a, SymDim) and not isinstance(b, SymDim):
        return b
    if isinstance(b, SymDim) and not isinstance(a, SymDim):
        return a
    raise IRError(f"{op}: cannot broadcast dims {a} and {b}")


def broadcast_shapes(*shapes: Sequence[DimLike], op: str = "") -> tuple[DimLike, ...]:
    rank = max((len(s) for s in shapes), default=0)
    out: list[DimLike] = [1] * rank
    for s in shapes:
        padded = [1] * (rank - len(s)) + list(s)
        out = [broadcast_dim(x, y, op) for x, y in zip(out, padded)]
    return tuple(out)


def numel(shape: Sequence[DimLike]) -> DimLike:
    n: DimLike = 1
    for d in shape:
        n = n * d
    return simplify(n)


def slice_bound(i: DimLike, size: DimLike) -> DimLike:
    """A start or end as Python's slicing reads it: negative ints count from the end, and
    on a static dim both clamp into [0, size] (the kernels slice the same way)."""
    if isinstance(i, int) and i < 0:
        i = size + i
        if isinstance(i, int):
            i = max(i, 0)
    if isinstance(i, int) and isinstance(size, int):
        i = min(i, size)
    return i


def slice_len(size: DimLike, start: DimLike, end: DimLike, step: int) -> DimLike:
    """Length of ``x[start:end:step]`` along a dim of ``size``; start/end already clamped."""
    if step <= 0:
        raise IRError(f"slice: step must be positive, got {step}")
    length = end - start
    if isinstance(length, int) and length <= 0:
        return 0
    return simplify((length + step - 1) // step)
