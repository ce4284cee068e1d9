"""Fuse LayerNorm and RMSNorm written out with reductions into ``layer_norm`` / ``rms_norm``.

The rules compose. ``layer-norm`` and ``rms-norm`` turn the normalization itself into a
norm without parameters; ``norm-cast`` drops the cast to f32 and back that Hugging Face
Llama/T5 norms wrap around it; ``norm-weight`` and ``norm-bias`` fold the affine
``* w + b`` that follows (w and b constants of the normalized shape). Each rule is one
formula with its spellings as alternatives; the engine tries both operand orders of ``add``
and ``mul``.
"""

from __future__ import annotations

from tgraph.ir import DType, Node, Value
from tgraph.ir.dims import format_shape
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Match, P, Pattern, RewritePass, Rule

X = P.var("x")
EPS = P.var("eps")
# Mantissa bits: a cast to a type with at least as many loses nothing.
MANTISSA = {DType.bfloat16: 8, DType.float16: 11, DType.float32: 24, DType.float64: 53}


def _mean(arg: Pattern, name: str) -> Pattern:
    return P.op("reduce_mean", arg, keepdim=True, name=name)


def _square(v: Pattern) -> Pattern:
    return P.either(P.op("pow", v, P.scalar(2.0)), P.op("mul", v, v))


def _normalized(num: Pattern, denom: Pattern) -> Pattern:
    """``num / sqrt(denom)`` or ``num * rsqrt(denom)``."""
    return P.either(P.op("div", num, P.op("sqrt", denom)), P.op("mul", num, P.op("rsqrt", denom)))


def _last_axis_only(node: Node, rank: int) -> bool:
    return tuple(a % rank for a in node.attrs["axes"]) == (rank - 1,)


def _eps_reason(eps: Value) -> str | None:
    if eps.const is None or eps.const.size != 1:
        return f"eps %{eps.name} is not a scalar constant"
    return None


def _norm_check(m: Match) -> str | None:
    x = m["x"]
    if x.dtype not in MANTISSA or x.rank == 0:
        return f"input {x.type} is not a float tensor"
    for key in ("mean", "var"):
        if key in m and not _last_axis_only(m[key], x.rank):
            return f"{m[key].op} %{m[key].name} reduces axes {m[key].attrs['axes']}, want the last"
    if m.root.output.type != x.type:
        return f"result type {m.root.output.type} differs from the input's {x.type}"
    return _eps_reason(m["eps"])


def _eps(m: Match) -> float:
    # The shortest decimal that round-trips in the constant's dtype: f32 1e-5, not 9.99999975e-06.
    return float(str(m["eps"].const.reshape(())[()]))


# layer_norm(x) = (x - mean(x)) / sqrt(var(x) + eps)
#   var(x) = mean(d * d) | mean(d ** 2) | var(x, correction=0)      with d = x - mean(x)
#   a / sqrt(v) | a * rsqrt(v)
_D = P.op("sub", X, _mean(X, "mean"))
_VARIANCE = P.either(
    _mean(_square(_D), "var"), P.op("var", X, correction=0, keepdim=True, name="var")
)
LAYER_NORM = Rule(
    name="layer-norm",
    pattern=_normalized(_D, P.op("add", _VARIANCE, EPS)),
    check=_norm_check,
    replace=lambda b, m: b.op("layer_norm", m["x"], axis=-1, eps=_eps(m)),
)

# rms_norm(x) = x / sqrt(mean(x ** 2) + eps)       x ** 2 as pow(x, 2) or x * x
RMS_NORM = Rule(
    name="rms-norm",
    pattern=_normalized(X, P.op("add", _mean(_square(X), "mean"), EPS)),
    check=_norm_check,
    replace=lambda b, m: b.op("rms_norm", m["x"], axis=-1, eps=_eps(m)),
)


def _param_reason(what: str, p: Value, norm: Node) -> str | None:
    x = norm.inputs[0]
    want = tuple(x.shape[norm.attrs["axis"] % x.rank :])
    if p.const is None:
        return f"{what} %{p.name} is not a constant"
    if tuple(p.shape) != want:
        return f"{what} shape {format_shape(p.shape)} != normalized shape {format_shape(want)}"
    return None


def _norm(ops: tuple[str, ...], *params: str) -> Pattern:
    return P.op(ops, X, *map(P.var, params), name="norm")


# norm(x) * w = norm(x, w)
NORM_WEIGHT = Rule(
    name="norm-weight",
    pattern=P.op("mul", _norm(("layer_norm", "rms_norm")), P.var("w")),
    check=lambda m: _param_reason("weight", m["w"], m["norm"]),
    replace=lambda b, m: b.op(m["norm"].op, m["x"], m["w"], **m["norm"].attrs),
)


# layer_norm(x[, w]) + b = layer_norm(x, w, b)
NORM_BIAS = Rule(
    name="norm-bias",
    pattern=P.op("add", P.op("layer_norm", X, P.opt(P.var("w")), name="norm"), P.var("b")),
    check=lambda m: _param_reason("bias", m["b"], m["norm"]),
    replace=lambda b, m: b.op("layer_norm", m["x"], m.get("w"), m["b"], **m["norm"].attrs),
)


def _cast_check(m: Match) -> str | None:
    x, wide = m["x"], m["wide"].output.dtype
    if x.dtype not in MANTISSA or wide not in MANTISSA:
        return f"casts {x.dtype} -> {wide} are not between float types"
    if MANTISSA[wide] < MANTISSA[x.dtype]:
        return f"the norm runs in {wide}, narrower than the input's {x.dtype}"
    if m.root.output.dtype != x.dtype:
        return f"result is cast to {m.root.output.dtype}, not back to {x.dtype}"
    return None


# cast(norm(cast(x, f32)), x.dtype) = norm(x)       (the norm computes in f32 internally)
NORM_CAST = Rule(
    name="norm-cast",
    pattern=P.op(
        "cast", P.op(("layer_norm", "rms_norm"), P.op("cast", X, name="wide"), name="norm")
    ),
    check=_cast_check,
    replace=lambda b, m: b.op(m["norm"].op, m["x"], **m["norm"].attrs),
)


@register("fuse-layernorm")
class FuseLayerNorm(RewritePass):
    """Fuse LayerNorm / RMSNorm written out with reduce_mean (and casts) into one op."""

    rules = (LAYER_NORM, RMS_NORM, NORM_CAST, NORM_WEIGHT, NORM_BIAS)
