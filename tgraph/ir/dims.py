"""Symbolic dimensions: small immutable integer expressions over named symbols.

A shape in the IR is a tuple whose entries are plain ``int`` or :class:`SymDim`.
A ``SymDim`` is a polynomial with integer coefficients over *atoms*; an atom is a
symbol name (``batch``, ``seq``), an opaque floor division / modulo of another
expression by a positive integer (``seq//2``, from convolution arithmetic), or the maximum /
minimum of two expressions (``max(0,1-seq)``, from size clamps such as ``max(0, n - s)``). The canonical form makes equal
expressions compare and hash equal, so ``(seq+1)-1 == seq`` and
``batch*seq == seq*batch``.

Arithmetic that yields a constant returns a plain ``int``; use :func:`simplify`
on any mix of ints and SymDims to get that normal form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Union

DimLike = Union[int, "SymDim"]

# A monomial is a sorted tuple of atoms (with repetition for powers); () is the constant term.
_Monomial = tuple["_Atom", ...]


class _Atom:
    """An indivisible factor: a symbol, ``expr // k`` / ``expr % k`` that did not simplify, or
    ``max(a, b)`` / ``min(a, b)`` of two dims that are not both constant."""

    __slots__ = ("kind", "name", "expr", "k", "args", "_key")

    def __init__(
        self,
        kind: str,
        name: str = "",
        expr: SymDim | None = None,
        k: int = 0,
        args: tuple[DimLike, DimLike] = (),
    ):
        self.kind = kind  # "sym" | "floordiv" | "mod" | "max" | "min"
        self.name = name
        self.expr = expr
        self.k = k
        self.args = args
        if kind == "sym":
            self._key = name
        elif kind in ("max", "min"):
            self._key = f"{kind}({args[0]},{args[1]})"
        else:
            # Parenthesized as a whole, so 3*((seq+1)//2) and -(seq//2) print unambiguously.
            op = "//" if kind == "floordiv" else "%"
            inner = str(expr) if expr.is_symbol() else f"({expr})"
            self._key = f"({inner}{op}{k})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Atom) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: _Atom) -> bool:
        return self._key < other._key

    def __str__(self) -> str:
        return self._key

    def evaluate(self, bindings: Mapping[str, int]) -> int:
        if self.kind == "sym":
            try:
                return int(bindings[self.name])
            except KeyError:
                raise KeyError(f"symbolic dim {self.name!r} has no binding") from None
        if self.kind in ("max", "min"):
            values = [evaluate(a, bindings) for a in self.args]
            return max(values) if self.kind == "max" else min(values)
        value = evaluate(self.expr, bindings)
        return value // self.k if self.kind == "floordiv" else value % self.k

    def symbols(self) -> set[str]:
        if self.kind == "sym":
            return {self.name}
        if self.kind in ("max", "min"):
            return set().union(*(a.free_symbols() for a in self.args if isinstance(a, SymDim)))
        return self.expr.free_symbols()


class SymDim:
    """A symbolic dimension, e.g. ``batch``, ``seq+1`` or ``batch*seq``.

    Build symbols with :meth:`SymDim.symbol` and combine them with ``+ - * // %``.
    Instances are immutable and hashable.
    """

    __slots__ = ("_terms", "_hash")

    def __init__(self, terms: Mapping[_Monomial, int]):
        items = tuple(sorted((m, c) for m, c in terms.items() if c != 0))
        object.__setattr__(self, "_terms", items)
        object.__setattr__(self, "_hash", hash(items))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SymDim is immutable")

    @staticmethod
    def symbol(name: str) -> SymDim:
        if not name.isidentifier():
            raise ValueError(f"bad symbol name {name!r}: want an identifier such as 'seq'")
        return SymDim({(_Atom("sym", name),): 1})

    # -- structure -----------------------------------------------------------------------------

    @property
    def terms(self) -> tuple[tuple[_Monomial, int], ...]:
        return self._terms

    def is_symbol(self) -> bool:
        """True for a bare symbol such as ``batch`` (not ``2*batch`` or ``batch+1``)."""
        return (
            len(self._terms) == 1
            and self._terms[0][1] == 1
            and len(self._terms[0][0]) == 1
            and self._terms[0][0][0].kind == "sym"
        )

    @property
    def name(self) -> str:
        if not self.is_symbol():
            raise ValueError(f"{self} is not a bare symbol")
        return self._terms[0][0][0].name

    def free_symbols(self) -> set[str]:
        out: set[str] = set()
        for mono, _ in self._terms:
            for atom in mono:
                out |= atom.symbols()
        return out

    def constant_term(self) -> int:
        for mono, coeff in self._terms:
            if mono == ():
                return coeff
        return 0

    # -- arithmetic ----------------------------------------------------------------------------

    def __add__(self, other: DimLike) -> DimLike:
        other = _as_sym(other)
        if other is NotImplemented:
            return NotImplemented
        terms = dict(self._terms)
        for mono, coeff in other._terms:
            terms[mono] = terms.get(mono, 0) + coeff
        return _normalize(terms)

    __radd__ = __add__

    def __neg__(self) -> DimLike:
        return _normalize({m: -c for m, c in self._terms})

    def __sub__(self, other: DimLike) -> DimLike:
        other = _as_sym(other)
        if other is NotImplemented:
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: DimLike) -> DimLike:
        return (-self) + other

    def __mul__(self, other: DimLike) -> DimLike:
        other = _as_sym(other)
        if other is NotImplemented:
            return NotImplemented
        terms: dict[_Monomial, int] = {}
        for m1, c1 in self._terms:
            for m2, c2 in other._terms:
                mono = tuple(sorted(m1 + m2))
                terms[mono] = terms.get(mono, 0) + c1 * c2
        return _normalize(terms)

    __rmul__ = __mul__

    def _split_by(self, k: int) -> tuple[DimLike, DimLike]:
        """``self = k*q + r`` with every coefficient of ``r`` in [0, k): (q, r).

        ``(r + k*q) // k == r//k + q`` and ``(r + k*q) % k == r % k`` for integers, so
        floor division and modulo keep only ``r`` inside the atom: convolution arithmetic
        ``((seq-10)//5)+1`` and ``(seq//5)-1`` are then one canonical dim.
        """
        quotient = {m: c // k for m, c in self._terms}
        rest = {m: c % k for m, c in self._terms}
        return _normalize(quotient), _normalize(rest)

    def __floordiv__(self, other: DimLike) -> DimLike:
        k = _positive_int(other, "//")
        if k == 1:
            return self
        quotient, rest = self._split_by(k)
        if isinstance(rest, int):  # constant rest in [0, k)
            return quotient
        nested = _nested_floordiv(rest)
        if nested is not None:  # (x//a + c)//k == (x + c*a)//(a*k): stacked strided convs
            inner, a, c = nested
            return quotient + (inner + c * a) // (a * k)
        return quotient + SymDim({(_Atom("floordiv", expr=rest, k=k),): 1})

    def __mod__(self, other: DimLike) -> DimLike:
        k = _positive_int(other, "%")
        if k == 1:
            return 0
        _, rest = self._split_by(k)
        if isinstance(rest, int):
            return rest
        return SymDim({(_Atom("mod", expr=rest, k=k),): 1})

    # -- comparison and printing -----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SymDim):
            return self._terms == other._terms
        return False

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: DimLike) -> bool:
        # Only for deterministic sorting; symbolic dims have no numeric order.
        return str(self) < str(other)

    def __str__(self) -> str:
        parts: list[str] = []
        for mono, coeff in sorted(self._terms, key=lambda t: (len(t[0]) == 0, t[0])):
            body = "*".join(str(a) for a in mono)
            if not body:
                text = str(abs(coeff))
            elif abs(coeff) == 1:
                text = body
            else:
                text = f"{abs(coeff)}*{body}"
            if not parts:
                parts.append(text if coeff > 0 else f"-{text}")
            else:
                parts.append(("+" if coeff > 0 else "-") + text)
        return "".join(parts)

    def __repr__(self) -> str:
        return f"SymDim({str(self)!r})"

    def __reduce__(self):
        # Pickle through the text form (used by save/load of artifacts).
        return (parse_dim, (str(self),))


def _nested_floordiv(d: SymDim) -> tuple[SymDim, int, int] | None:
    """(x, a, c) when ``d`` is ``x//a + c`` for a constant c, else None."""
    terms = dict(d.terms)
    c = terms.pop((), 0)
    if len(terms) != 1:
        return None
    ((mono, coeff),) = terms.items()
    if coeff != 1 or len(mono) != 1 or mono[0].kind != "floordiv":
        return None
    return mono[0].expr, mono[0].k, c


def _as_sym(x: object) -> SymDim:
    if isinstance(x, SymDim):
        return x
    if isinstance(x, bool):
        return NotImplemented
    if isinstance(x, int):
        return SymDim({(): x})
    return NotImplemented


def _positive_int(x: DimLike, op: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
        raise TypeError(f"symbolic dim {op} needs a positive int, got {x!r}")
    return x


def _normalize(terms: Mapping[_Monomial, int]) -> DimLike:
    terms = {m: c for m, c in terms.items() if c != 0}
    if not terms:
        return 0
    if list(terms) == [()]:
        return terms[()]
    return SymDim(terms)


def simplify(d: DimLike) -> DimLike:
    """Return ``d`` as a plain ``int`` when it is constant."""
    if isinstance(d, SymDim):
        return _normalize(dict(d.terms))
    return int(d)


def evaluate(d: DimLike, bindings: Mapping[str, int]) -> int:
    """The integer value of ``d`` given a value for each of its symbols."""
    if not isinstance(d, SymDim):
        return int(d)
    total = 0
    for mono, coeff in d.terms:
        term = coeff
        for atom in mono:
            term *= atom.evaluate(bindings)
        total += term
    return total


def dim_max(a: DimLike, b: DimLike) -> DimLike:
    """``max(a, b)``: an int when both are ints or equal, else a ``max`` atom."""
    return _extremum("max", a, b)


def dim_min(a: DimLike, b: DimLike) -> DimLike:
    """``min(a, b)``: an int when both are ints or equal, else a ``min`` atom."""
    return _extremum("min", a, b)


def _extremum(kind: str, a: DimLike, b: DimLike) -> DimLike:
    a, b = simplify(a), simplify(b)
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b) if kind == "max" else min(a, b)
    if a == b:
        return a
    # The larger one is known when their difference has a sign for every size: a constant
    # (max(seq+2, seq) = seq+2) or a polynomial bounded below (max(1-seq, 0) = 0).
    for big, small in ((a, b), (b, a)):
        low = lower_bound(big - small)
        if low is not None and low >= 0:
            return big if kind == "max" else small
    first, second = sorted((a, b), key=str)  # max and min commute: one canonical order
    return SymDim({(_Atom(kind, args=(first, second)),): 1})


def lower_bound(d: DimLike) -> int | None:
    """A lower bound of ``d`` for every value of its symbols, or None when there is none this
    simple reasoning finds. Symbols are sizes of at least 1 (the call boundary refuses a
    symbolic dim of 0); ``x % k`` is at least 0; a term with a negative coefficient has no
    bound here (that would need an upper bound of its atoms)."""
    if not isinstance(d, SymDim):
        return int(d)
    total = 0
    for mono, coeff in d.terms:
        term = coeff
        for atom in mono:
            low = _atom_lower_bound(atom)
            if coeff < 0 or low is None or low < 0:
                return None
            term *= low
        total += term
    return total


def _atom_lower_bound(atom: _Atom) -> int | None:
    if atom.kind == "sym":
        return 1
    if atom.kind == "mod":
        return 0
    if atom.kind == "floordiv":
        low = lower_bound(atom.expr)
        return None if low is None else low // atom.k
    lows = [lower_bound(a) for a in atom.args]
    if atom.kind == "max":
        known = [x for x in lows if x is not None]
        return max(known) if known else None
    return None if None in lows else min(lows)


def format_shape(shape: Iterable[DimLike]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def parse_dim(text: str) -> DimLike:
    """Parse the text form written by ``str(dim)`` (``batch``, ``2*seq+1``, ``(seq//2)``)."""
    from .dim_text import Parser  # the parser builds dims with this module's arithmetic

    return Parser(text).parse()
