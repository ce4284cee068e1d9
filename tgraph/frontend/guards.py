"""The size conditions a traced graph is valid under, checked at the call boundary.

torch.export records as guards the conditions on input sizes that its trace relied on: a
model that branches on a size (SEW pads its upsampled sequence only ``if length <
n_frames``) exports the branch taken at the traced size, and the graph is wrong, silently,
at sizes that take the other one. ``ExportedProgram.module()`` checks them; tgraph's graph
must too. :func:`shape_guards` turns export's guard code (``2*(L['x'].size()[1] // 2) >=
L['x'].size()[1]``) into comparisons of IR dims (``2*(seq//2) >= seq``), kept in
``graph.meta["shape_guards"]`` as plain JSON; :func:`check_guards` evaluates them on a
call's sizes. Guards the IR's dim algebra cannot express (a symbolic divisor, an ``or``)
are left to the other checks.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tgraph.ir import DimLike, Graph, SymDim, dim_max, dim_min, evaluate, simplify
from tgraph.ir.dims import parse_dim

_COMPARE: dict[type, tuple[str, Callable[[int, int], bool]]] = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt), ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
}  # fmt: skip
_HOLDS = {sign: fn for sign, fn in _COMPARE.values()}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}  # fmt: skip


class _Inexpressible(Exception):
    """A guard outside the IR's dim algebra."""


def shape_guards(guard_code: Sequence[str], graph: Graph) -> list[dict[str, Any]]:
    """``[{"text", "clauses": [[lhs - rhs, sign], ...]}]``: each guard of ``guard_code`` (all
    clauses must hold) that is not already true for every size, in IR dims."""
    dims = {v.name: tuple(v.shape) for v in graph.inputs}
    out = []
    for code in guard_code:
        clauses = parse_guard(code, dims)
        if clauses is None:
            continue
        texts = [f"{lhs} {sign} {rhs}" for lhs, sign, rhs in clauses]
        kept = [[str(simplify(lhs - rhs)), sign] for lhs, sign, rhs in clauses]
        kept = [c for c in kept if not _always(*c)]
        text = " and ".join(texts)
        if kept and all(g["text"] != text for g in out):
            out.append({"text": text, "clauses": kept})
    return out


def parse_guard(code: str, dims: Mapping[str, tuple]) -> list[tuple[DimLike, str, DimLike]] | None:
    """The clauses ``(lhs, sign, rhs)`` of one guard of export's guard code (all must hold),
    in IR dims (``dims``: each input's, by name); None when the IR cannot express it."""
    try:
        return _clauses(ast.parse(code, mode="eval").body, dims)
    except (_Inexpressible, SyntaxError, ValueError, ZeroDivisionError):
        return None


def multiple_guards(multiples: Sequence[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """Guards of the input dims export made multiples: ``(name, k, r)`` -> name % k == r."""
    out = []
    for name, k, r in multiples:
        diff = simplify(SymDim.symbol(name) % k - r)
        out.append({"text": f"{name} % {k} == {r}", "clauses": [[str(diff), "=="]]})
    return out


def _always(diff: str, sign: str) -> bool:
    d = parse_dim(diff)
    return isinstance(d, int) and _HOLDS[sign](d, 0)


def _clauses(node: ast.AST, dims: Mapping[str, tuple]) -> list[tuple[DimLike, str, DimLike]]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [c for value in node.values for c in _clauses(value, dims)]
    if not isinstance(node, ast.Compare):
        raise _Inexpressible(ast.dump(node))
    sides = [_dim(node.left, dims)] + [_dim(c, dims) for c in node.comparators]
    out = []
    for i, op in enumerate(node.ops):  # a < b <= c: a < b and b <= c
        if type(op) not in _COMPARE:
            raise _Inexpressible(ast.dump(op))
        out.append((sides[i], _COMPARE[type(op)][0], sides[i + 1]))
    return out


def _dim(node: ast.AST, dims: Mapping[str, tuple]) -> DimLike:
    """An arithmetic guard expression as an IR dim: ``L['x'].size()[1]`` is x's dim 1."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_dim(node.operand, dims)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        right = _dim(node.right, dims)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and not isinstance(right, int):
            raise _Inexpressible("a symbolic divisor")
        return _ARITH[type(node.op)](_dim(node.left, dims), right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        combine = {"max": dim_max, "min": dim_min}.get(node.func.id)
        if combine is None or not node.args:
            raise _Inexpressible(node.func.id)
        out = _dim(node.args[0], dims)
        for arg in node.args[1:]:
            out = combine(out, _dim(arg, dims))
        return out
    return _input_dim(node, dims)


def _input_dim(node: ast.AST, dims: Mapping[str, tuple]) -> DimLike:
    # L['name'].size()[i]: Subscript(Call(Attribute(Subscript(Name L, 'name'), size)), i)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        call = node.value
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "size" and isinstance(call.func.value, ast.Subscript)):  # fmt: skip
            inner = call.func.value
            if isinstance(inner.value, ast.Name) and isinstance(inner.slice, ast.Constant):
                shape = dims.get(inner.slice.value)
                if shape is not None and 0 <= node.slice.value < len(shape):
                    return shape[node.slice.value]
    raise _Inexpressible(ast.dump(node))


@functools.lru_cache(maxsize=4096)
def _parsed(diff: str) -> DimLike:
    return parse_dim(diff)


def failed_guard(graph: Graph, bindings: Mapping[str, int]) -> str | None:
    """The text of the first guard in ``graph.meta`` that sizes ``bindings`` break, if any."""
    for guard in graph.meta.get("shape_guards") or ():
        for diff, sign in guard["clauses"]:
            d = _parsed(diff)
            needed = d.free_symbols() if isinstance(d, SymDim) else set()
            if not all(s in bindings for s in needed):
                break  # a size this call does not bind: not checkable here
            if not _HOLDS[sign](evaluate(d, bindings), 0):
                return guard["text"]
    return None
