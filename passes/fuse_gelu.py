"""Fuse GELU written out elementwise (erf and tanh forms) into ``gelu``, and a bias into it.

A product of three factors ``x * 0.5 * (1 + f(x))`` may be parenthesized three ways;
each is one alternative of the rule's pattern (the engine tries both operand orders of
every ``mul``), so each rule is one formula with its spellings. Constants are matched
loosely and then checked to the precision of the input's dtype, so a model in f16 fuses
too and a near-miss constant is rejected with a reason.
"""

from __future__ import annotations

import math

from tgraph.ir import DType
from tgraph.ir.dims import format_shape
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Match, P, Pattern, RewritePass, Rule

X = P.var("x")
SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
EXACT = {
    "half": 0.5,
    "one": 1.0,
    "sqrt2": SQRT_2,
    "inv_sqrt2": 1.0 / SQRT_2,
    "sqrt_2_over_pi": SQRT_2_OVER_PI,
    "coeff": 0.044715,
    "three": 3.0,
}
# Machine epsilon: a constant written in the input's dtype is within this of the exact value.
EPS = {
    DType.float64: 2.0**-52,
    DType.float32: 2.0**-23,
    DType.float16: 2.0**-10,
    DType.bfloat16: 2.0**-7,
}


def _c(name: str) -> Pattern:
    """A scalar near the constant ``name`` (checked precisely later)."""
    return P.scalar(EXACT[name], name=name, rel_tol=1e-2)


def _product(a: Pattern, b: Pattern, c: Pattern) -> Pattern:
    """``a * b * c`` in any of its three parenthesizations."""
    return P.either(
        P.op("mul", P.op("mul", a, b), c),
        P.op("mul", P.op("mul", a, c), b),
        P.op("mul", P.op("mul", b, c), a),
    )


def _check(m: Match) -> str | None:
    x, out = m["x"], m.root.output
    if x.dtype not in EPS:
        return f"input dtype {x.dtype} is not a float type"
    if out.type != x.type:
        return f"constants broadcast the result to {out.type}, input is {x.type}"
    for name, exact in EXACT.items():
        if name in m and not math.isclose(m[name], exact, rel_tol=EPS[x.dtype]):
            return f"constant {m[name]!r} is not {exact!r} to {x.dtype} precision"
    return None


def _gelu_rule(name: str, approximate: str, inner: Pattern) -> Rule:
    one_plus = P.op("add", P.op("tanh" if approximate == "tanh" else "erf", inner), _c("one"))
    return Rule(
        name=name,
        pattern=_product(X, _c("half"), one_plus),
        check=_check,
        replace=lambda b, m: b.op("gelu", m["x"], approximate=approximate),
    )


# gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2)))          with x / sqrt(2) or x * (1 / sqrt(2))
GELU_ERF = _gelu_rule(
    "gelu-erf",
    "none",
    P.either(P.op("div", X, _c("sqrt2")), P.op("mul", X, _c("inv_sqrt2"))),
)

# gelu_tanh(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
#                with x^3 as pow(x, 3) or x * x * x
_CUBE = P.either(P.op("pow", X, _c("three")), P.op("mul", P.op("mul", X, X), X))
GELU_TANH = _gelu_rule(
    "gelu-tanh",
    "tanh",
    P.op("mul", _c("sqrt_2_over_pi"), P.op("add", X, P.op("mul", _c("coeff"), _CUBE))),
)


def _bias_check(m: Match) -> str | None:
    x, bias = m["x"], m["b"]
    producer = x.producer
    if producer is not None and producer.op in ("linear", "matmul"):
        return f"input comes from {producer.op} %{producer.name}: its bias belongs there"
    if bias.rank != 1 or x.rank < 1 or bias.shape[0] != x.shape[-1]:
        return f"bias shape {format_shape(bias.shape)}, want ({x.shape[-1]},)"
    return None


# bias_gelu(x, b) = gelu(x + b)                        with b of shape (features,)
BIAS_GELU = Rule(
    name="bias-gelu",
    pattern=P.op("gelu", P.op("add", P.var("x"), P.const("b")), name="gelu"),
    check=_bias_check,
    replace=lambda builder, m: builder.op(
        "bias_gelu", m["x"], m["b"], approximate=m["gelu"].attrs["approximate"]
    ),
)


@register("fuse-gelu")
class FuseGelu(RewritePass):
    """Fuse GELU written out with erf or tanh (GPT-2's gelu_new) into gelu; fold a bias in."""

    rules = (GELU_ERF, GELU_TANH, BIAS_GELU)
