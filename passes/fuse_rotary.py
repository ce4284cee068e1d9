"""Fuse the rotate-half rotary embedding into one ``rotary`` op."""

from __future__ import annotations

from tgraph.ir import Value
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Builder, Match, P, Pattern, RewritePass, Rule


def _rotate_half(negate: Pattern | None) -> Pattern:
    # cat(-x[..., D/2:], x[..., :D/2], axis=-1)
    hi = P.op("slice", P.var("x"), name="hi")
    lo = P.op("slice", P.var("x"), name="lo")
    neg = P.op("neg", hi) if negate is None else P.op("mul", hi, negate)
    return P.op("concat", neg, lo, name="cat")


def _pattern(negate: Pattern | None) -> Pattern:
    # x * cos + rotate_half(x) * sin
    return P.op(
        "add",
        P.op("mul", P.var("x"), P.var("cos")),
        P.op("mul", _rotate_half(negate), P.var("sin")),
    )


def _half_reason(m: Match) -> str | None:
    x = m["x"]
    if x.rank < 1 or not isinstance(x.shape[-1], int) or x.shape[-1] % 2:
        return f"last dim of %{x.name} {list(x.shape)} is not a static even size"
    last, half = x.rank - 1, x.shape[-1] // 2
    if m["cat"].attrs["axis"] % x.rank != last:
        return f"concat axis {m['cat'].attrs['axis']} is not the last"
    for name, want in (("hi", (half, x.shape[-1])), ("lo", (0, half))):
        a = m[name].attrs
        if a["axis"] % x.rank != last or (a["start"], a["end"], a["step"]) != (*want, 1):
            return f"slice %{m[name].name} is not x[..., {want[0]}:{want[1]}]"
    return None


def _check(m: Match) -> str | None:
    x, cos, sin = m["x"], m["cos"], m["sin"]
    reason = _half_reason(m)
    if reason:
        return reason
    if x.dtype != cos.dtype or x.dtype != sin.dtype:
        return f"dtypes differ: x {x.dtype}, cos {cos.dtype}, sin {sin.dtype}"
    if tuple(m.root.output.shape) != tuple(x.shape):
        return f"cos/sin broadcast x {list(x.shape)} to {list(m.root.output.shape)}"
    return None


def _replace(b: Builder, m: Match) -> Value:
    return b.op("rotary", m["x"], m["cos"], m["sin"])


@register("fuse-rotary")
class FuseRotary(RewritePass):
    """Fuse x*cos + cat(-x2, x1)*sin (rotate-half RoPE) into rotary(x, cos, sin)."""

    # -x2 written as neg(x2) or x2 * -1
    rules = tuple(
        Rule("rotate-half", _pattern(negate), _replace, _check) for negate in (None, P.scalar(-1.0))
    )
