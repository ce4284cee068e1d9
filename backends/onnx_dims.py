"""The symbolic-dim half of :class:`~tgraph.backends.onnx_lowering.Lowering`: the int64
tensors that hold a symbolic dim or shape at run time, each computed once and shared.

A symbol is read with ``Shape`` off the graph input where it first appears; an expression
is built from it with ``Add``/``Mul``, ``Max``/``Min`` and exact floor division.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tgraph.ir import SymDim, simplify
from tgraph.ir.dims import DimLike

from .errors import LoweringError


class DimLowering:
    """Mixin: needs ``op``, ``const``, ``ints``, ``_dims``, ``_shapes``, ``_pinned``,
    ``_hint`` and ``_symbol_source`` from the Lowering it is part of."""

    def dim(self, d: DimLike, scalar: bool = False) -> str:
        """An int64 tensor holding the value of ``d`` at run time: shape [1], or [] if scalar."""
        d = simplify(d)
        key = (d, scalar)
        if key not in self._dims:
            saved, self._hint = self._hint, f"dim[{d}]"
            if isinstance(d, int):
                name = self.const(np.asarray(d if scalar else [d], dtype=np.int64))
            elif scalar:
                name = self.op("Squeeze", [self.dim(d), self.ints([0])])
            else:
                name = self._poly(d)
            self._hint = saved
            self._dims[key] = name
            self._pinned.add(name)
        return self._dims[key]

    def _poly(self, d: SymDim) -> str:
        total = None
        for mono, coeff in d.terms:
            if mono == ():
                term = self.ints([coeff])
            else:
                term = None
                for atom in mono:
                    factor = self._atom(atom)
                    term = factor if term is None else self.op("Mul", [term, factor])
                if coeff != 1:
                    term = self.op("Mul", [term, self.ints([coeff])])
            total = term if total is None else self.op("Add", [total, term])
        return total

    def _atom(self, atom: Any) -> str:
        if atom.kind == "sym":
            if atom.name not in self._symbol_source:
                raise LoweringError(f"symbolic dim {atom.name!r} appears in no graph input shape")
            source, axis = self._symbol_source[atom.name]
            return self.op("Shape", [source], start=axis, end=axis + 1)
        if atom.kind in ("max", "min"):
            return self.op(atom.kind.capitalize(), [self.dim(a) for a in atom.args])
        inner = self.dim(atom.expr)
        k = self.ints([atom.k])
        rem = self.op("Mod", [inner, k], fmod=0)  # Python's sign rule: rem in [0, k)
        if atom.kind == "mod":
            return rem
        return self.op("Div", [self.op("Sub", [inner, rem]), k])  # exact, so floor

    def shape(self, dims: Sequence[DimLike]) -> str:
        """A 1-D int64 tensor holding ``dims`` (static runs stay constants)."""
        dims = tuple(simplify(d) for d in dims)
        if dims not in self._shapes:
            if all(isinstance(d, int) for d in dims):
                name = self.ints(dims)
            else:
                pieces: list[str] = []
                run: list[int] = []
                for d in dims:
                    if isinstance(d, int):
                        run.append(d)
                        continue
                    if run:
                        pieces.append(self.ints(run))
                        run = []
                    pieces.append(self.dim(d))
                if run:
                    pieces.append(self.ints(run))
                saved, self._hint = self._hint, "shape"
                name = pieces[0] if len(pieces) == 1 else self.op("Concat", pieces, axis=0)
                self._hint = saved
            self._shapes[dims] = name
            self._pinned.add(name)
        return self._shapes[dims]
