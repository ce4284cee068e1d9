"""``aten::einsum`` as permutes, reshapes, sums and batched matmuls: the IR has no einsum op.

Operands contract left to right. For each pair, a subscript that neither the other operand
nor anything later reads is summed away first; the rest are batch subscripts (in both and
needed later: matmul batch dims, broadcast like torch), contracted ones (in both, needed no
more: the matmul's inner dim) and free ones (in one operand: its rows or columns). So
``bhqd,bhkd->bhqk`` is one matmul of (b, h, q, d) by (b, h, d, k), and ``...si,...id->...sd``
broadcasts its leading dims. A subscript repeated within one operand (a diagonal or trace,
``ii->i``) is refused, naming the equation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tgraph.frontend.aten.base import aten
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import Value
from tgraph.ir.ops.shapes import numel

# Subscripts that "..." expands to: digits, which no einsum subscript can be.
_ELLIPSIS = "0123456789"


def parse(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """The subscripts of each operand and of the output, "..." spelled out per dim.

    Ellipsis dims broadcast from the right, as torch's do; without "->" the output is the
    ellipsis dims, then the subscripts seen once, in alphabetical order.
    """
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise UnsupportedError(
            f"einsum {equation!r}: {len(terms)} subscripts, {len(ranks)} operands"
        )
    widths = [rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks) if "..." in t]
    ellipsis = _ELLIPSIS[: max(widths, default=0)]
    spelled = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            width = rank - len(term.replace("...", ""))
            term = term.replace("...", ellipsis[len(ellipsis) - width :])
        if len(term) != rank or not all(c.isalpha() or c in ellipsis for c in term):
            raise UnsupportedError(
                f"einsum {equation!r}: subscripts {term!r} for a rank-{rank} operand"
            )
        if len(set(term)) != len(term):
            raise UnsupportedError(
                f"einsum {equation!r}: a subscript repeats within one operand (a diagonal), "
                "which tgraph does not decompose"
            )
        spelled.append(term)
    if arrow:
        return spelled, rhs.replace("...", ellipsis)
    counts = Counter("".join(spelled))
    return spelled, ellipsis + "".join(
        sorted(c for c, n in counts.items() if n == 1 and c.isalpha())
    )


@aten("einsum.default")
def _einsum(ctx, equation, operands, path=None):
    values = [ctx.value(v) for v in operands]
    dtype = ctx.meta_type().dtype
    values = [ctx.cast(v, dtype) for v in values]
    terms, out = parse(equation, [v.rank for v in values])
    missing = set(out) - set("".join(terms))
    if missing or len(set(out)) != len(out):
        raise UnsupportedError(f"einsum {equation!r}: output subscripts {out!r} are not valid")
    x, term = values[0], terms[0]
    for i in range(1, len(values)):
        x, term = _contract(ctx, (x, term), (values[i], terms[i]), out + "".join(terms[i + 1 :]))
    x, term = _sum_out(ctx, x, term, set(out))
    return _permute(ctx, x, term, out)


def _contract(ctx, a: tuple[Value, str], b: tuple[Value, str], later: str) -> tuple[Value, str]:
    """a x b over their shared subscripts that ``later`` does not read: (result, subscripts)."""
    (x, xt), (y, yt) = a, b
    x, xt = _sum_out(ctx, x, xt, set(yt) | set(later))
    y, yt = _sum_out(ctx, y, yt, set(xt) | set(later))
    shared = [c for c in xt if c in yt]
    batch = [c for c in shared if c in later]
    inner = [c for c in shared if c not in later]
    for c in inner:  # a size-1 dim against a size-n one: sum the n side first (broadcast)
        nx, ny = x.shape[xt.index(c)], y.shape[yt.index(c)]
        if nx == 1 and ny != 1:
            y = ctx.emit("reduce_sum", [y], axes=(yt.index(c),), keepdim=True)
        elif ny == 1 and nx != 1:
            x = ctx.emit("reduce_sum", [x], axes=(xt.index(c),), keepdim=True)
    rows = [c for c in xt if c not in yt]
    cols = [c for c in yt if c not in xt]
    sizes = tuple(x.shape[xt.index(c)] for c in rows) + tuple(y.shape[yt.index(c)] for c in cols)
    z = ctx.emit("matmul", [_matrix(ctx, x, xt, batch, rows, inner),
                            _matrix(ctx, y, yt, batch, inner, cols)])  # fmt: skip
    # (batch..., R, C) -> (batch..., rows..., cols...); matmul broadcast the batch dims
    return _reshape(ctx, z, tuple(z.shape[: len(batch)]) + sizes), "".join(batch + rows + cols)


def _matrix(ctx, x: Value, term: str, batch: list[str], rows: list[str], cols: list[str]) -> Value:
    """x permuted to (batch..., rows..., cols...) and flattened to (batch..., R, C)."""
    x = _permute(ctx, x, term, "".join(batch + rows + cols))
    n = len(batch)
    shape = tuple(x.shape[:n]) + (
        numel(x.shape[n : n + len(rows)]),
        numel(x.shape[n + len(rows) :]),
    )
    return _reshape(ctx, x, shape)


def _sum_out(ctx, x: Value, term: str, keep: set[str]) -> tuple[Value, str]:
    axes = tuple(i for i, c in enumerate(term) if c not in keep)
    if not axes:
        return x, term
    y = ctx.emit("reduce_sum", [x], axes=axes, keepdim=False)
    return y, "".join(c for c in term if c in keep)


def _permute(ctx, x: Value, term: str, order: str) -> Value:
    perm = tuple(term.index(c) for c in order)
    return x if perm == tuple(range(len(perm))) else ctx.emit("permute", [x], perm=perm)


def _reshape(ctx, x: Value, shape: tuple) -> Value:
    return x if tuple(x.shape) == shape else ctx.emit("reshape", [x], shape=shape)
