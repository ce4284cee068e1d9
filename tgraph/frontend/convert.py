"""Conversions between torch and IR types: dtypes, symbolic sizes, tensors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import sympy
import torch

from tgraph.frontend.dim_facts import substitute
from tgraph.frontend.periodic import exact_form
from tgraph.ir import DimLike, SymDim, dim_max, dim_min
from tgraph.tensors import DTypeError, shared_view, to_numpy, to_torch, torch_dtype
from tgraph.tensors import ir_dtype as _ir_dtype


class UnsupportedError(Exception):
    """The model uses something the frontend cannot translate faithfully."""


def ir_dtype(dtype: torch.dtype):
    """The IR dtype of a torch dtype; UnsupportedError (a frontend error) when there is none."""
    try:
        return _ir_dtype(dtype)
    except DTypeError as e:
        raise UnsupportedError(str(e)) from None


__all__ = [
    "SymbolTable",
    "UnsupportedError",
    "ir_dtype",
    "shared_view",
    "to_numpy",
    "to_torch",
    "torch_dtype",
]


class SymbolTable:
    """Maps torch.export's sympy symbols (``s0``, ``s77``) to the IR's named ones."""

    def __init__(self) -> None:
        self.names: dict[sympy.Symbol, str] = {}
        # input dims export made multiples (``320*s23``): the hidden symbol -> its value in
        # a new symbol X for the dim, (X - r) / k, and (name, k, r): name % k must be r
        self.derived: dict[sympy.Symbol, sympy.Expr] = {}
        self.multiples: list[tuple[str, int, int]] = []
        # sizes a checked guard of the trace fixes: atom text -> value (dim_facts.py)
        self.fixed: dict[str, DimLike] = {}

    def name(self, sym: sympy.Symbol, name: str) -> None:
        self.names[sym] = name

    def name_derived(self, expr: sympy.Basic, name: str) -> bool:
        """Name an input dim of the form ``k*s + r`` (k > 0; a dim torch.export made a
        multiple, e.g. ``seq = 320*_seq``): every size is read with ``s = (name - r) / k``,
        exact on the sizes the graph takes, and calls must have ``name % k == r``. False
        when ``expr`` has another form."""
        (sym,) = expr.free_symbols if len(expr.free_symbols) == 1 else (None,)
        if sym is None or sym in self.names or sym in self.derived:
            return False
        poly = sympy.Poly(expr, sym) if expr.is_polynomial(sym) else None
        if poly is None or poly.degree() != 1 or not all(c.is_Integer for c in poly.all_coeffs()):
            return False
        k, r = (int(c) for c in poly.all_coeffs())
        if k <= 0:
            return False
        dim = sympy.Symbol(f"tgraph_dim_{name}", integer=True, nonnegative=True)
        self.names[dim] = name
        self.derived[sym] = (dim - r) / k
        self.multiples.append((name, k, r % k))
        return True

    def convert(self, expr: object) -> DimLike:
        """An int, torch.SymInt or sympy expression as an IR dim."""
        if isinstance(expr, torch.SymInt):
            expr = expr.node.expr
        if isinstance(expr, (int, np.integer)):
            return int(expr)
        if not isinstance(expr, sympy.Basic):
            raise UnsupportedError(f"cannot read {expr!r} as a dimension")
        if self.derived and expr.free_symbols & set(self.derived):
            expr = sympy.expand(expr.xreplace(self.derived))  # 320*s23 -> seq, s23 -> seq/320
        return substitute(self._convert(expr), self.fixed)

    def _convert(self, e: sympy.Basic) -> DimLike:
        if isinstance(e, sympy.Integer):
            return int(e)
        if isinstance(e, (sympy.Add, sympy.Mul)) and any(
            isinstance(a, sympy.Rational) and not a.is_Integer for a in e.atoms(sympy.Rational)
        ):
            # (seq - 1)/2 from a derived dim: exact, so an integer quotient
            num, den = sympy.fraction(sympy.together(e))
            if den.is_Integer and int(den) > 1:
                return self._convert(sympy.expand(num)) // int(den)
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise UnsupportedError(f"symbolic size {e} does not come from an input dim")
            return SymDim.symbol(self.names[e])
        if isinstance(e, sympy.Add):
            out: DimLike = 0
            for a in e.args:
                out = out + self._convert(a)
            return out
        if isinstance(e, sympy.Mul):
            out = 1
            for a in e.args:
                out = out * self._convert(a)
            return out
        if isinstance(e, sympy.Pow) and isinstance(e.exp, sympy.Integer) and int(e.exp) > 0:
            base = self._convert(e.base)
            out = 1
            for _ in range(int(e.exp)):
                out = out * base
            return out
        fname = type(e).__name__
        if fname in ("FloorDiv", "Mod", "PythonMod") and not e.args[1].is_Integer:
            # a view's -1 is numel // (the other dims): exact when the quotient is a polynomial
            quotient = sympy.cancel(e.args[0] / e.args[1])
            if sympy.fraction(quotient)[1] == 1:
                return self._convert(sympy.expand(quotient)) if fname == "FloorDiv" else 0
            form = exact_form(e)  # a padded length // its chunk count: the chunk size
            if form is not None:
                return self._convert(form)
            raise UnsupportedError(
                f"symbolic size {e}: a division by a symbolic size, which IR dims cannot hold"
            )
        if fname == "FloorDiv":
            return self._convert(e.args[0]) // int(e.args[1])
        if fname in ("Mod", "PythonMod"):
            return self._convert(e.args[0]) % int(e.args[1])
        if fname in ("TruncToInt", "FloorToInt"):  # a size times a float factor (interpolate)
            return self._scaled(e.args[0])
        if fname in ("Max", "Min"):  # size clamps: max(0, n - seq) (sympy's or torch's class)
            combine = dim_max if fname == "Max" else dim_min
            out = self._convert(e.args[0])
            for a in e.args[1:]:
                out = combine(out, self._convert(a))
            return out
        raise UnsupportedError(f"symbolic size expression {e} ({fname}) is not supported")

    def _scaled(self, e: sympy.Basic) -> DimLike:
        """floor(c * size) for a float c that is an exact small fraction p/q: (p*size)//q.

        Sizes are non-negative, so truncation is floor. ``scale_factor=1.5`` on a symbolic
        height arrives as ``TruncToInt(1.5*ToFloat(s))``.
        """
        factor, inner = Fraction(1), e
        if isinstance(e, sympy.Mul) and len(e.args) == 2 and e.args[0].is_number:
            factor = Fraction(float(e.args[0])).limit_denominator(1024)
            if float(factor) != float(e.args[0]) or factor <= 0:
                raise UnsupportedError(f"symbolic size {e}: factor is not a small fraction")
            inner = e.args[1]
        if type(inner).__name__ != "ToFloat":
            raise UnsupportedError(f"symbolic size expression {e} is not supported")
        return (self._convert(inner.args[0]) * factor.numerator) // factor.denominator

    def shape(self, t: torch.Tensor) -> tuple[DimLike, ...]:
        return tuple(self.convert(d) for d in t.shape)
