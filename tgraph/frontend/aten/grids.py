"""ATen ops that build grids from sizes or 1-d tensors: meshgrid, eye and outer products, as
decompositions into arange, reshape, expand, comparisons and broadcast products."""

from __future__ import annotations

from tgraph.frontend.aten.base import aten
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, Value


@aten("meshgrid.indexing", "meshgrid.default")
def _meshgrid(ctx, tensors, indexing="ij"):
    # Output i holds tensors[i] along its own dim of the (n0, n1, ...) grid, broadcast over the
    # others; 'xy' swaps the first two grid dims (tensor 0 then varies along dim 1).
    if indexing not in ("ij", "xy"):
        raise UnsupportedError(f"meshgrid indexing {indexing!r} (want 'ij' or 'xy')")
    xs = [ctx.value(t) for t in tensors]
    grid = tuple(ctx.meta_type(0).shape)
    dims = list(range(len(xs)))
    if indexing == "xy" and len(xs) > 1:
        dims[0], dims[1] = 1, 0
    return [_along(ctx, x, dim, grid) for x, dim in zip(xs, dims)]


def _along(ctx, x: Value, dim: int, grid: tuple) -> Value:
    """1-d (or 0-d) ``x`` laid along ``dim`` of ``grid`` and expanded to all of it."""
    line = tuple(grid[dim] if d == dim else 1 for d in range(len(grid)))
    y = ctx.emit("reshape", [x], shape=line)
    return ctx.emit("expand", [y], shape=grid) if line != grid else y


@aten("eye.default", "eye.m")
def _eye(ctx, n, m=None, **kwargs):
    # (arange(n)[:, None] == arange(m)[None, :]) in the output dtype; n and m may be symbolic
    # (XLNet's torch.eye(qlen)).
    n = ctx.value(n)
    m = n if m is None else ctx.value(m)
    rows = ctx.emit("arange", [], start=0, end=n, step=1, dtype=DType.int64)
    cols = ctx.emit("arange", [], start=0, end=m, step=1, dtype=DType.int64)
    hit = ctx.emit("eq", [ctx.emit("unsqueeze", [rows], axes=(1,)), cols])
    return ctx.cast(hit, ctx.meta_type().dtype)


@aten("outer.default", "ger.default")
def _outer(ctx, a, b):
    # a[:, None] * b[None, :]
    a, b = ctx.value(a), ctx.value(b)
    dtype = ctx.meta_type().dtype
    column = ctx.emit("unsqueeze", [ctx.cast(a, dtype)], axes=(1,))
    return ctx.emit("mul", [column, ctx.cast(b, dtype)])
