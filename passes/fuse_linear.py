"""Fuse matmul-by-a-constant-weight and bias adds into ``linear``.

The rules compose: ``matmul(x, W) + b`` first becomes ``linear(x, W.T)`` (rule ``matmul``),
then ``linear(x, W.T, b)`` (rule ``linear-bias``). Hugging Face GPT-2's Conv1D flattens the
leading dims around its ``addmm``; rule ``flatten-linear`` removes that reshape pair, since
``linear`` already works on any number of leading dims (when the input's rows are grouped
otherwise, e.g. heads not yet merged, one reshape to the output's leading dims stays).
"""

from __future__ import annotations

import numpy as np

from tgraph.ir import Value
from tgraph.ir.dims import format_shape
from tgraph.ir.ops.shapes import numel
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Builder, Match, P, RewritePass, Rule


def _transposed(b: Builder, w: Value) -> Value:
    """``w.T`` as a new constant named after ``w``, shared by every rewrite that needs it."""
    name = f"{w.name}.T"
    have = b.graph.initializers.get(name)
    if have is not None and have.meta.get("transpose_of") == w.name:
        return have
    t = b.const(np.ascontiguousarray(w.const.T), w.dtype, hint=name)
    t.meta["transpose_of"] = w.name
    return t


def _weight_reason(m: Match) -> str | None:
    x, w = m["x"], m["w"]
    if w.rank != 2:
        return f"weight @{w.name} has rank {w.rank}, want 2"
    if w.dtype != x.dtype:
        return f"weight dtype {w.dtype} != input dtype {x.dtype}"
    return None


# matmul(x, permute(W, (1, 0))) = x @ W.T = linear(x, W)
MATMUL_PERMUTED = Rule(
    name="matmul-permuted-weight",
    pattern=P.op("matmul", P.var("x"), P.op("permute", P.const("w"), perm=(1, 0))),
    check=_weight_reason,
    replace=lambda b, m: b.op("linear", m["x"], m["w"]),
)


def _matmul_rule(keep_trainable: bool) -> Rule:
    def check(m: Match) -> str | None:
        if keep_trainable and m["w"].trainable:
            return f"weight @{m['w'].name} is a trainable parameter (keep_trainable=true)"
        return _weight_reason(m)

    # matmul(x, W) = x @ W = linear(x, W.T)
    return Rule(
        name="matmul",
        pattern=P.op("matmul", P.var("x"), P.const("w")),
        check=check,
        replace=lambda b, m: b.op("linear", m["x"], _transposed(b, m["w"])),
    )


def _bias_reason(m: Match) -> str | None:
    bias, w = m["b"], m["w"]
    if bias.rank != 1:
        return f"bias @{bias.name} has shape {format_shape(bias.shape)}, want rank 1"
    if bias.shape[0] != w.shape[0]:
        return f"bias has {bias.shape[0]} elements, want {w.shape[0]} (out_features)"
    return None


# linear(x, W) + b = linear(x, W, b)      (b of shape (out_features,))
LINEAR_BIAS = Rule(
    name="linear-bias",
    pattern=P.op("add", P.op("linear", P.var("x"), P.var("w")), P.const("b")),
    check=_bias_reason,
    replace=lambda b, m: b.op("linear", m["x"], m["w"], m["b"]),
)


def _flatten_reason(m: Match) -> str | None:
    flat, out = m["flat"].output, m.root.output
    n = m["w"].shape[0]
    if out.rank < 1 or out.shape[-1] != n:
        return f"reshape to {format_shape(out.shape)} regroups the {n} output features"
    if numel(out.shape[:-1]) != numel(flat.shape[:-1]):
        return f"rows {format_shape(flat.shape[:-1])} and {format_shape(out.shape[:-1])} differ"
    return None


def _unflattened(b: Builder, m: Match) -> Value:
    """``x`` with the output's leading dims: x itself, or one reshape (merging heads, say)."""
    x, flat, out = m["x"], m["flat"].output, m.root.output
    shape = tuple(out.shape[:-1]) + (flat.shape[-1],)
    return x if tuple(x.shape) == shape else b.op("reshape", x, shape=shape)


def _flatten_rule(with_bias: bool) -> Rule:
    # reshape(linear(reshape(x, (B*T, C)), W, b), (B, T, N)) = linear(reshape(x, (B, T, C)), W, b)
    # (linear maps each row alike; the reshapes only regroup rows). GPT-2's Conv1D has
    # x of shape (B, T, C), so no reshape is left.
    names = ("w", "b") if with_bias else ("w",)
    flat = P.op("reshape", P.var("x"), name="flat")
    return Rule(
        name="flatten-linear",
        pattern=P.op("reshape", P.op("linear", flat, *map(P.var, names))),
        check=_flatten_reason,
        replace=lambda b, m: b.op("linear", _unflattened(b, m), *(m[n] for n in names)),
    )


@register("fuse-linear")
class FuseLinear(RewritePass):
    """Turn matmul by a constant weight (+ bias, GPT-2 Conv1D reshapes) into linear.

    Options:
        keep_trainable: never turn a trainable weight into a new transposed constant.
    """

    def __init__(self, max_matches: int | None = None, keep_trainable: bool = False):
        super().__init__(max_matches)
        self.rules = (
            MATMUL_PERMUTED,
            _matmul_rule(bool(keep_trainable)),
            LINEAR_BIAS,
            _flatten_rule(with_bias=False),
            _flatten_rule(with_bias=True),
        )
