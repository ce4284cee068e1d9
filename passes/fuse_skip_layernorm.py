"""Fuse a residual add into the norm that reads it: skip_layer_norm / skip_rms_norm.

The fused op has two outputs, the normalized value and the sum. In a pre-norm Transformer
the sum is also the next residual, so the rules export the add node: its other users (all
after the norm) read the fused node's second output instead. A reshape between the add and
the norm that keeps the normalized last dim moves after the fused op.
"""

from __future__ import annotations

from tgraph.ir.dims import format_shape
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Match, P, RewritePass, Rule

PARAMS = {"layer_norm": ("weight", "bias"), "rms_norm": ("weight",)}
FUSED = {"layer_norm": "skip_layer_norm", "rms_norm": "skip_rms_norm"}


def _check(m: Match) -> str | None:
    total = m["sum"].output
    for v in (m["x"], m["skip"]):
        if tuple(v.shape) != tuple(total.shape):
            return f"%{v.name} {format_shape(v.shape)} broadcasts to {format_shape(total.shape)}"
    return None


def _rule(op: str, n_params: int) -> Rule:
    # norm(x + skip, params) = skip_norm(x, skip, params)[0];  x + skip = skip_norm(...)[1]
    params = PARAMS[op][:n_params]

    def replace(builder, m):
        inputs = [m["x"], m["skip"], *(m[p] for p in params)]
        fused = builder.node(FUSED[op], inputs, **m["norm"].attrs)
        return fused.outputs  # (normalized, sum): for the norm and for the exported add

    total = P.op("add", P.var("x"), P.var("skip"), name="sum")
    return Rule(
        name=f"skip-{op.replace('_', '-')}",
        pattern=P.op(op, total, *map(P.var, params), name="norm"),
        check=_check,
        replace=replace,
        exports=("sum",),
    )


def _reshaped_check(m: Match) -> str | None:
    # Normalizing the last axis commutes with a reshape that keeps it (OPT flattens (B, T, C)
    # to (B*T, C) between the residual add and the norm).
    total, flat, norm = m["sum"].output, m["flat"].output, m["norm"]
    if flat.rank == 0 or total.rank == 0 or flat.shape[-1] != total.shape[-1]:
        return (
            f"reshape {format_shape(total.shape)} -> {format_shape(flat.shape)} moves the last dim"
        )
    if norm.attrs["axis"] % flat.rank != flat.rank - 1:
        return f"norm over axis {norm.attrs['axis']}, not only the last"
    return _check(m)


def _reshaped_rule(op: str, n_params: int) -> Rule:
    # norm(reshape(x + skip), params) = reshape(skip_norm(x, skip, params)[0])
    params = PARAMS[op][:n_params]

    def replace(builder, m):
        inputs = [m["x"], m["skip"], *(m[p] for p in params)]
        normed, total = builder.node(FUSED[op], inputs, **m["norm"].attrs).outputs
        shape = m["flat"].attrs["shape"]
        flat = builder.op("reshape", total, shape=shape)
        return builder.op("reshape", normed, shape=shape), total, flat  # norm, add, reshape

    total = P.op("add", P.var("x"), P.var("skip"), name="sum")
    flat = P.op("reshape", total, name="flat")
    return Rule(
        name=f"skip-{op.replace('_', '-')}-reshaped",
        pattern=P.op(op, flat, *map(P.var, params), name="norm"),
        check=_reshaped_check,
        replace=replace,
        exports=("sum", "flat"),
    )


@register("fuse-skip-layernorm")
class FuseSkipLayerNorm(RewritePass):
    """Fuse residual add + LayerNorm/RMSNorm into skip_layer_norm / skip_rms_norm."""

    rules = tuple(
        make(op, n)
        for make in (_rule, _reshaped_rule)
        for op in PARAMS
        for n in range(len(PARAMS[op]), -1, -1)
    )
