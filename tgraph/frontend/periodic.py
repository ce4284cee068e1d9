"""Exact forms of size expressions that divide by a symbolic size, proved per residue class.

Chunked attention and Mamba scans pad a length to a multiple of the chunk and split it
into chunks: with ``P = s + (64 - s % 64) % 64`` (the padded length) and ``n = P // 64``
(the chunk count), torch.export records the chunk size as ``P // n``, a division by a
symbolic size that IR dims cannot hold, though it is 64 for every ``s``.

Floor division and modulo by constants are periodic: writing ``s = L*q + r`` with ``L`` the
least common multiple of the constant divisors, every ``x // k`` and ``x % k`` of a
polynomial in ``q`` whose non-constant coefficients ``k`` divides reduces to a polynomial,
exactly, for each residue ``r`` in ``[0, L)``. A division by a symbolic size then reduces
when the quotient of the two polynomials is a polynomial with integer coefficients. When
every residue class gives the same polynomial in ``s``, the expression *is* that polynomial
for every size: a proof over all ``L`` cases, not a sample, so no guard is needed. Anything
else (a case that does not reduce, cases that disagree) returns None and the caller keeps
its error.
"""

from __future__ import annotations

import functools
import itertools
import math

import sympy

# Residue classes tried at most (L ** number of symbols): keeps the proof to milliseconds.
MAX_CASES = 4096
_DIVISIONS = ("FloorDiv", "Mod", "PythonMod")


class _Irreducible(Exception):
    """A sub-expression with no polynomial form in this residue class."""


@functools.lru_cache(maxsize=1024)  # a size expression recurs in every node's shape
def exact_form(e: sympy.Expr) -> sympy.Expr | None:
    """A polynomial in ``e``'s symbols equal to ``e`` for every value of them, or None."""
    symbols = sorted(e.free_symbols, key=str)
    divisors = [int(a.args[1]) for a in sympy.preorder_traversal(e) if _constant_division(a)]
    period = math.lcm(*divisors) if divisors else 1
    if not symbols or period ** len(symbols) > MAX_CASES:
        return None
    qs = [sympy.Dummy(f"q_{s}", integer=True, nonnegative=True) for s in symbols]
    forms = set()
    for residues in itertools.product(range(period), repeat=len(symbols)):
        at = {s: period * q + r for s, q, r in zip(symbols, qs, residues)}
        try:
            reduced = _reduce(e, at)
        except _Irreducible:
            return None
        back = {q: (s - r) / period for s, q, r in zip(symbols, qs, residues)}
        forms.add(sympy.expand(reduced.xreplace(back)))
        if len(forms) > 1:
            return None
    (form,) = forms
    return form


def _constant_division(a: sympy.Basic) -> bool:
    return type(a).__name__ in _DIVISIONS and a.args[1].is_Integer and int(a.args[1]) > 0


def _reduce(e: sympy.Basic, at: dict) -> sympy.Expr:
    """``e`` with each symbol replaced by ``at[symbol]`` and every division made exact."""
    if e.is_Integer:
        return e
    if isinstance(e, sympy.Symbol):
        if e not in at:
            raise _Irreducible(str(e))
        return at[e]
    name = type(e).__name__
    args = [_reduce(a, at) for a in e.args]
    if isinstance(e, sympy.Add):
        return sympy.expand(sympy.Add(*args))
    if isinstance(e, sympy.Mul):
        return sympy.expand(sympy.Mul(*args))
    if (isinstance(e, sympy.Pow) or name == "PowByNatural") and args[1].is_Integer:
        if int(args[1]) < 0:
            raise _Irreducible(str(e))
        return sympy.expand(args[0] ** args[1])
    if name in _DIVISIONS:
        return _divide(args[0], args[1], floor=name == "FloorDiv")
    raise _Irreducible(name)


def _divide(a: sympy.Expr, b: sympy.Expr, floor: bool) -> sympy.Expr:
    """``a // b`` (``floor``) or ``a % b`` of two reduced polynomials, exactly, or raise."""
    if b.is_Integer:
        k = int(b)
        if k <= 0:
            raise _Irreducible(f"division by {k}")
        c0 = a.as_coefficients_dict().get(sympy.S.One, sympy.S.Zero)
        rest = sympy.expand(a - c0)
        coeffs = rest.as_coefficients_dict().values()
        if not c0.is_Integer or not all(c.is_Integer and int(c) % k == 0 for c in coeffs):
            raise _Irreducible(f"({a}) // {k}")
        return sympy.expand(rest / k + int(c0) // k) if floor else sympy.Integer(int(c0) % k)
    quotient = sympy.cancel(a / b)
    num, den = sympy.fraction(quotient)
    if den != 1 or not all(c.is_Integer for c in sympy.expand(num).as_coefficients_dict().values()):
        raise _Irreducible(f"({a}) // ({b})")
    return sympy.expand(num) if floor else sympy.Integer(0)
