"""The text form of symbolic dims read back: ``str(dim)`` -> dim (see :func:`dims.parse_dim`)."""

from __future__ import annotations

from .dims import DimLike, SymDim, _extremum, _positive_int


class Parser:
    """A tiny recursive-descent parser for ``+ - * // %`` over ints, symbols and parentheses."""

    def __init__(self, text: str):
        self.text = text.replace(" ", "")
        self.pos = 0

    def parse(self) -> DimLike:
        value = self._sum()
        if self.pos != len(self.text):
            raise ValueError(f"cannot parse dim {self.text!r} at {self.pos}")
        return value

    def _peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def _sum(self) -> DimLike:
        value = self._product()
        while self.pos < len(self.text) and self.text[self.pos] in "+-":
            op = self.text[self.pos]
            self.pos += 1
            rhs = self._product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def _product(self) -> DimLike:
        value = self._unary()
        while True:
            if self._peek("//"):
                self.pos += 2
                value = _floordiv(value, self._unary())
            elif self._peek("*"):
                self.pos += 1
                value = value * self._unary()
            elif self._peek("%"):
                self.pos += 1
                value = _mod(value, self._unary())
            else:
                return value

    def _unary(self) -> DimLike:
        if self._peek("-"):
            self.pos += 1
            return -self._unary()
        if self._peek("("):
            self.pos += 1
            value = self._sum()
            if not self._peek(")"):
                raise ValueError(f"cannot parse dim {self.text!r}: missing ')'")
            self.pos += 1
            return value
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] == "_"
        ):
            self.pos += 1
        token = self.text[start : self.pos]
        if not token:
            raise ValueError(f"cannot parse dim {self.text!r} at {start}")
        if token in ("max", "min") and self._peek("("):
            return self._extremum(token)
        return int(token) if token.isdigit() else SymDim.symbol(token)

    def _extremum(self, kind: str) -> DimLike:
        self.pos += 1  # "("
        first = self._sum()
        if not self._peek(","):
            raise ValueError(f"cannot parse dim {self.text!r}: {kind} wants two arguments")
        self.pos += 1
        second = self._sum()
        if not self._peek(")"):
            raise ValueError(f"cannot parse dim {self.text!r}: missing ')'")
        self.pos += 1
        return _extremum(kind, first, second)


def _floordiv(a: DimLike, b: DimLike) -> DimLike:
    if isinstance(a, SymDim):
        return a // b
    return a // _positive_int(b, "//")


def _mod(a: DimLike, b: DimLike) -> DimLike:
    if isinstance(a, SymDim):
        return a % b
    return a % _positive_int(b, "%")
