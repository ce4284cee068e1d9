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


def fixed_sizes(guard_code: Sequence[str], dims: Mapping[str, tuple]) -> dict[str, int]:
    """``{atom text: value}`` for each guard clause ``a*X + c == 0`` (``X`` a floor division,
    modulo, max or min of input dims; an input dim itself stays symbolic) that fixes
    ``X``. ``dims``: the IR dims of each input, by name."""
    fixed: dict[str, int] = {}
    for code in guard_code:
        clauses = parse_guard(code, dims)
        for lhs, sign, rhs in clauses or ():
            diff = simplify(lhs - rhs)
            if sign != "==" or not isinstance(diff, SymDim):
                continue
            terms = dict(diff.terms)
            c = terms.pop((), 0)
            if len(terms) != 1:
                continue
            ((mono, a),) = terms.items()
            if len(mono) == 1 and mono[0].kind != "sym" and (-c) % a == 0:
                fixed[str(mono[0])] = -c // a
    return fixed


def substitute(d: DimLike, fixed: Mapping[str, int]) -> DimLike:
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


def _atom(atom, fixed: Mapping[str, int]) -> DimLike:
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
