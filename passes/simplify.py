"""Algebraic simplification: drop nodes that compute their input unchanged.

Each rule is one identity. A rule that forwards an existing value must not change the
type: ``x * ones(1, 1, 1)`` broadcasts a rank-2 ``x`` to rank 3, so the type is checked
on every site and a mismatch is rejected with a reason.
"""

from __future__ import annotations

from tgraph.ir import Graph, IRError, Value
from tgraph.passes.manager import PassResult, register
from tgraph.passes.rewrite import Builder, Match, P, Pattern, RewritePass, Rule


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _keeps_type(m: Match, v: Value) -> str | None:
    """None when forwarding ``v`` in place of the root's output changes neither dtype nor shape."""
    out = m.root.output
    if v.dtype != out.dtype:
        return f"would change dtype {out.dtype} to {v.dtype}"
    if tuple(v.shape) != tuple(out.shape):
        return f"would change shape {_fmt(out.shape)} to {_fmt(v.shape)}"
    return None


def _forward(b: Builder, m: Match) -> Value:
    return m["x"]


def _forward_rule(name: str, pattern: Pattern) -> Rule:
    """A rule whose result is the matched ``x`` itself, checked to keep the type."""
    return Rule(
        name=name, pattern=pattern, replace=_forward, check=lambda m: _keeps_type(m, m["x"])
    )


def _exact(value: float) -> Pattern:
    # The engine matches scalars with an absolute tolerance; the check insists on equality.
    return P.scalar(value, name="c", rel_tol=0.0)


def _scalar_rule(name: str, pattern: Pattern, value: float) -> Rule:
    def check(m: Match) -> str | None:
        if m["c"] != value:
            return f"constant {m['c']!r} is not exactly {value!r}"
        return _keeps_type(m, m["x"])

    return Rule(name=name, pattern=pattern, replace=_forward, check=check)


def _same_shape_attr(m: Match) -> str | None:
    """reshape/expand to the shape ``x`` already has."""
    want = tuple(m["node"].attrs["shape"])
    if want != tuple(m["x"].shape):
        return f"{m['node'].op} changes shape {_fmt(m['x'].shape)} to {_fmt(want)}"
    return _keeps_type(m, m["x"])


def _cast_same(m: Match) -> str | None:
    if m["node"].attrs["dtype"] != m["x"].dtype:
        return f"cast converts {m['x'].dtype} to {m['node'].attrs['dtype']}"
    return _keeps_type(m, m["x"])


def _whole_slice(m: Match) -> str | None:
    attrs, x = m["node"].attrs, m["x"]
    dim = x.shape[attrs["axis"] % x.rank]
    end = attrs["end"]
    covers = end == dim or (isinstance(end, int) and isinstance(dim, int) and end >= dim)
    if not covers:
        return f"slice ends at {end}, dim {attrs['axis']} has size {dim}"
    return _keeps_type(m, x)


def _empty_operand(m: Match) -> str | None:
    """The other operand of ``concat(x, e)`` / ``concat(e, x)`` is empty along the axis."""
    e = m["e"]
    size = e.shape[m["node"].attrs["axis"] % e.rank]
    if size != 0:
        return f"operand %{e.name} has size {size} along the concat axis, not 0"
    return _keeps_type(m, m["x"])


def _same_axes(m: Match) -> str | None:
    rank = m["x"].rank + len(m["u"].attrs["axes"])
    added = sorted({a % rank for a in m["u"].attrs["axes"]})
    dropped = sorted({a % rank for a in m["node"].attrs["axes"]})
    if added != dropped:
        return f"squeeze axes {tuple(dropped)} differ from unsqueeze axes {tuple(added)}"
    return _keeps_type(m, m["x"])


def _is_identity_perm(perm) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


def _one_reshape(b: Builder, m: Match) -> Value:
    return b.op("reshape", m["x"], shape=m["node"].attrs["shape"])


def _one_permute(b: Builder, m: Match) -> Value:
    # out[i] = y[outer[i]] and y[j] = x[inner[j]], so out[i] = x[inner[outer[i]]]
    inner, outer = m["inner"].attrs["perm"], m["node"].attrs["perm"]
    perm = tuple(inner[p] for p in outer)
    return m["x"] if _is_identity_perm(perm) else b.op("permute", m["x"], perm=perm)


x = P.var("x")

RULES = (
    # identity(x) = x  (aliases, clones, contiguous copies)
    _forward_rule("identity", P.op("identity", x)),
    # dropout(x) = x  (the IR's dropout is the inference-mode one)
    _forward_rule("dropout", P.op("dropout", x)),
    # x * 1 = 1 * x = x
    _scalar_rule("mul-one", P.op("mul", x, _exact(1.0)), 1.0),
    # x + 0 = 0 + x = x  (up to the sign of a zero x, as in every ML compiler)
    _scalar_rule("add-zero", P.op("add", x, _exact(0.0)), 0.0),
    # x - 0 = x
    _scalar_rule("sub-zero", P.op("sub", x, _exact(0.0)), 0.0),
    # x / 1 = x
    _scalar_rule("div-one", P.op("div", x, _exact(1.0)), 1.0),
    # cast(x: T, T) = x
    Rule("cast-same", P.op("cast", x, name="node"), replace=_forward, check=_cast_same, quiet=True),
    # reshape(reshape(x, s1), s2) = reshape(x, s2)  (row-major data never moves)
    Rule(
        "reshape-reshape",
        P.op("reshape", P.op("reshape", x), name="node"),
        replace=_one_reshape,
    ),
    # reshape(x, x.shape) = x
    Rule(
        "reshape-same",
        P.op("reshape", x, name="node"),
        replace=_forward,
        check=_same_shape_attr,
        quiet=True,
    ),
    # permute(x, (0, 1, ..., n-1)) = x
    _forward_rule("permute-identity", P.op("permute", x, perm=_is_identity_perm)),
    # permute(permute(x, p), q) = permute(x, p[q])  (and x when p[q] is the identity)
    Rule(
        "permute-permute",
        P.op("permute", P.op("permute", x, name="inner"), name="node"),
        replace=_one_permute,
    ),
    # expand(x, x.shape) = x
    Rule(
        "expand-same",
        P.op("expand", x, name="node"),
        replace=_forward,
        check=_same_shape_attr,
        quiet=True,
    ),
    # x[0:len:1] along any axis = x
    Rule(
        "slice-whole",
        P.op("slice", x, start=0, step=1, name="node"),
        replace=_forward,
        check=_whole_slice,
        quiet=True,
    ),
    # squeeze(unsqueeze(x, axes), axes) = x
    Rule(
        "squeeze-unsqueeze",
        P.op("squeeze", P.op("unsqueeze", x, name="u"), name="node"),
        replace=_forward,
        check=_same_axes,
    ),
    # concat([x]) = x
    _forward_rule("concat-single", P.op("concat", x)),
    # concat([x, e]) = concat([e, x]) = x when e is empty along the axis (Phi-3's rotary
    # over the whole head keeps q[..., head:], an empty pass-through)
    Rule(
        "concat-empty",
        P.op("concat", x, P.var("e"), name="node"),
        replace=_forward,
        check=_empty_operand,
        quiet=True,
    ),
    Rule(
        "concat-empty",
        P.op("concat", P.var("e"), x, name="node"),
        replace=_forward,
        check=_empty_operand,
        quiet=True,
    ),
)


@register("simplify")
class Simplify(RewritePass):
    """Remove algebraic no-ops: identity, dropout, x*1, x+0, same-type cast, reshape chains, ..."""

    rules = RULES

    def run(self, graph: Graph) -> PassResult:
        output_names = [v.name for v in graph.outputs]
        result = super().run(graph)
        _restore_output_names(graph, output_names)
        return result


def _restore_output_names(graph: Graph, names: list[str]) -> None:
    """A graph output now read straight from an earlier node's value gives it the output's name.

    ``identity(last_hidden_state)`` removed, the returned value is still ``last_hidden_state``.
    Graph inputs, initializers and values returned twice keep their own names.
    """
    for v, name in zip(graph.outputs, names):
        if v.name == name or v.producer is None or graph.outputs.count(v) > 1:
            continue
        try:
            graph.rename(v, name)
        except IRError:  # the name is taken by a value that still lives: keep the old one
            pass
