"""Fuse the rotary embedding, rotate-half (Llama) or interleaved (GPT-J), into one ``rotary``."""

from __future__ import annotations

from tgraph.ir import Value
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Builder, Match, P, Pattern, RewritePass, Rule


def _negated(x: Pattern, negate: Pattern | None) -> Pattern:
    return P.op("neg", x) if negate is None else P.op("mul", x, negate)


def _rotate_half(negate: Pattern | None) -> Pattern:
    # cat(-x[..., D/2:], x[..., :D/2], axis=-1)
    hi = P.op("slice", P.var("x"), name="hi")
    lo = P.op("slice", P.var("x"), name="lo")
    return P.op("concat", _negated(hi, negate), lo, name="cat")


def _rotate_pairs(negate: Pattern | None) -> Pattern:
    # stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2), as torch.export writes it
    odd = P.op("slice", P.var("x"), name="hi")
    even = P.op("slice", P.var("x"), name="lo")
    pair = P.op(
        "concat",
        P.op("unsqueeze", _negated(odd, negate), name="u_hi"),
        P.op("unsqueeze", even, name="u_lo"),
        name="cat",
    )
    return P.op("reshape", pair, name="flat")


def _pattern(rotated: Pattern) -> Pattern:
    # x * cos + rot(x) * sin
    return P.op(
        "add",
        P.op("mul", P.var("x"), P.var("cos")),
        P.op("mul", rotated, P.var("sin")),
    )


def _even_last(x: Value) -> str | None:
    if x.rank < 1 or not isinstance(x.shape[-1], int) or x.shape[-1] % 2:
        return f"last dim of %{x.name} {list(x.shape)} is not a static even size"
    return None


def _slices(m: Match, axis: int, hi: tuple, lo: tuple) -> str | None:
    """m's "hi" and "lo" slices take (start, end, step) ``hi`` and ``lo`` of x's last axis."""
    for name, want in (("hi", hi), ("lo", lo)):
        a = m[name].attrs
        if a["axis"] % m["x"].rank != axis or (a["start"], a["end"], a["step"]) != want:
            start, end, step = want
            span = f"{start}:{end}" + (f":{step}" if step != 1 else "")
            return f"slice %{m[name].name} is not x[..., {span}]"
    return None


def _half_reason(m: Match) -> str | None:
    x = m["x"]
    last = x.rank - 1
    if m["cat"].attrs["axis"] % x.rank != last:
        return f"concat axis {m['cat'].attrs['axis']} is not the last"
    dim = x.shape[-1]
    return _slices(m, last, (dim // 2, dim, 1), (0, dim // 2, 1))


def _pairs_reason(m: Match) -> str | None:
    x = m["x"]
    new = x.rank  # the pair axis the unsqueezes add after x's last
    for u in ("u_hi", "u_lo"):
        if tuple(a % (new + 1) for a in m[u].attrs["axes"]) != (new,):
            return f"unsqueeze %{m[u].name} does not add a last axis"
    if m["cat"].attrs["axis"] % (new + 1) != new:
        return f"concat axis {m['cat'].attrs['axis']} is not the new last one"
    if tuple(m["flat"].output.shape) != tuple(x.shape):
        return f"reshape %{m['flat'].name} does not flatten the pairs back to x's shape"
    dim = x.shape[-1]
    return _slices(m, new - 1, (1, dim, 2), (0, dim, 2))


def _check(m: Match, layout) -> str | None:
    x, cos, sin = m["x"], m["cos"], m["sin"]
    reason = _even_last(x) or layout(m)
    if reason:
        return reason
    if x.dtype != cos.dtype or x.dtype != sin.dtype:
        return f"dtypes differ: x {x.dtype}, cos {cos.dtype}, sin {sin.dtype}"
    if tuple(m.root.output.shape) != tuple(x.shape):
        return f"cos/sin broadcast x {list(x.shape)} to {list(m.root.output.shape)}"
    return None


def _rule(name: str, rotated: Pattern, layout, interleaved: bool) -> Rule:
    def check(m: Match) -> str | None:
        return _check(m, layout)

    def replace(b: Builder, m: Match) -> Value:
        return b.op("rotary", m["x"], m["cos"], m["sin"], interleaved=interleaved)

    return Rule(name, _pattern(rotated), replace, check)


@register("fuse-rotary")
class FuseRotary(RewritePass):
    """Fuse x*cos + rot(x)*sin into rotary(x, cos, sin): rot(x) = cat(-x2, x1) over the
    halves (rotate-half, Llama) or stack((-x[1::2], x[0::2]), -1).flatten(-2) over the pairs
    (interleaved, GPT-J, Cohere, CodeGen)."""

    # -x written as neg(x) or x * -1
    rules = tuple(
        rule
        for negate in (None, P.scalar(-1.0))
        for rule in (
            _rule("rotate-half", _rotate_half(negate), _half_reason, False),
            _rule("rotate-pairs", _rotate_pairs(negate), _pairs_reason, True),
        )
    )
