"""Size values the trace fixed by a guard, substituted into every dim the frontend reads.

A Mamba scan or chunked attention at a traced length below its chunk has one chunk, and
torch.export may specialize that: it records the guard ``(padded seq // 128) == 1`` and
writes ``1`` into the shapes downstream, while the shapes upstream still hold the
expression. The IR has to agree with export on every shape, so the frontend replaces such
an expression by its value wherever it reads a size. That is sound because the same guard
is one of ``graph.meta["shape_guards"]`` (``guards.py``), checked on every call: sizes that
would make it false are refused before the graph runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tgraph.ir import DimLike, SymDim, dim_max, dim_min, simplify

from .guards import parse_guard


def fixed_sizes(guard_code: Sequence[str], dims: Mapping[str, tuple]) -> dict[str, DimLike]:
    """``{atom text: value}`` for each guard clause ``a*X + rest == 0`` that fixes ``X``, a
    floor division, modulo, max or min of input dims (an input dim itself stays symbolic),
    to ``-rest / a``: ``(padded // 128) == 1`` fixes the chunk count to 1, ``seq ==
    min(256, seq)`` fixes ``min(256, seq)`` to ``seq``. ``dims``: each input's IR dims."""
    fixed: dict[str, DimLike] = {}
    for code in guard_code:
        for lhs, sign, rhs in parse_guard(code, dims) or ():
            diff = simplify(lhs - rhs)
            if sign == "==" and isinstance(diff, SymDim):
                fixed.update(_solve(diff))
    return fixed


def _solve(diff: SymDim) -> dict[str, DimLike]:
    """``{X: value}`` from ``diff == 0`` for the first non-symbol atom ``X`` that ``diff``
    holds alone in a term whose coefficient divides the rest."""
    terms = dict(diff.terms)
    for mono, a in terms.items():
        if len(mono) != 1 or mono[0].kind == "sym":
            continue
        rest = {m: c for m, c in terms.items() if m != mono}
        if any(c % a for c in rest.values()):
            continue
        value = simplify(SymDim({m: -c // a for m, c in rest.items()})) if rest else 0
        if str(mono[0]) not in str(value):  # X = f(X) fixes nothing (text: a false hit skips)
            return {str(mono[0]): value}
    return {}


def substitute(d: DimLike, fixed: Mapping[str, DimLike]) -> DimLike:
    """``d`` with every atom ``fixed`` names replaced by its value, rebuilt through the dim
    algebra (so ``max(1, 64*X)`` with ``X = 1`` is 64)."""
    if not isinstance(d, SymDim) or not fixed:
        return simplify(d)
    out: DimLike = 0
    for mono, coeff in d.terms:
        term: DimLike = coeff
        for atom in mono:
            term = term * _atom(atom, fixed)
        out = out + term
    return simplify(out)


def _atom(atom, fixed: Mapping[str, DimLike]) -> DimLike:
    key = str(atom)
    if key in fixed:
        return fixed[key]
    if atom.kind == "sym":
        return SymDim.symbol(atom.name)
    if atom.kind in ("max", "min"):
        combine = dim_max if atom.kind == "max" else dim_min
        return combine(*(substitute(a, fixed) for a in atom.args))
    inner = substitute(atom.expr, fixed)
    return inner // atom.k if atom.kind == "floordiv" else inner % atom.k
