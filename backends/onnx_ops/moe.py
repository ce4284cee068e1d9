"""Lowering of ``moe_experts`` (tgraph/ir/ops/moe.py): ONNX Runtime's com.microsoft MoE.

ORT's MoE routes by itself: softmax over ``router_probs`` (T, E), the top k of that, and
optionally their renormalization. tgraph's op takes the routing the model computed (its
own top-k index and weights, whatever its router does: Mixtral's renormalized softmax,
Qwen2-MoE's plain one, a sigmoid router), so the lowering hands MoE logits that make its
routing exactly that one: log(w) at each token's k experts and -inf elsewhere. The softmax
of those is w / sum(w), its top k are the model's k experts, and one Mul by sum(w) per
token restores the weights. ORT's CPU kernel runs a gated expert only as interleaved SwiGLU
(``swiglu_fusion=1``: rows gate0, up0, gate1, up1, ...), so a concatenated [gate | up]
weight is interleaved by a Reshape/Transpose that ORT folds at session load.

The kernel path: float32, gated SiLU (Mixtral, Qwen-MoE, OLMoE, DeepSeek) or ungated ReLU
or SiLU. Anything else, and everything with ``fused_kernels`` off, lowers to plain ops that
gather each (token, expert) pair's weights and run one batched MatMul (transformers'
``batched_mm``): exact, but a copy of k experts' weights per token.
"""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN
from tgraph.backends.onnx_ops.base import in_type, lowers, scalar
from tgraph.backends.onnx_ops.elementwise import _gelu
from tgraph.ir import DType


def _kernel_fits(node) -> bool:
    a = node.attrs
    if in_type(node, 0).dtype is not DType.float32:
        return False
    return a["activation"] == "silu" if a["gated"] else a["activation"] in ("relu", "silu")


def _interleave(ctx, w: str, shape) -> str:
    """[gate | up] rows (E, 2I[, H]) -> gate0, up0, gate1, up1, ... (E, 2I[, H])."""
    e, n = shape[0], shape[1]
    rest = list(shape[2:])
    split = ctx.op("Reshape", [w, ctx.ints([e, 2, n // 2, *rest])])
    perm = [0, 2, 1] + ([3] if rest else [])
    return ctx.op("Reshape", [ctx.op("Transpose", [split], perm=perm), ctx.ints([e, n, *rest])])


@lowers("moe_experts")
def _moe_experts(ctx, node, x, index, weights, w_in, w_out, b_in="", b_out=""):
    if ctx.fused_kernels and _kernel_fits(node):
        return _ort_moe(ctx, node, x, index, weights, w_in, w_out, b_in, b_out)
    return _gathered(ctx, node, x, index, weights, w_in, w_out, b_in, b_out)


def _ort_moe(ctx, node, x, index, weights, w_in, w_out, b_in, b_out) -> str:
    a = node.attrs
    experts = node.inputs[3].shape[0]
    k = node.inputs[1].shape[1]
    # logits whose softmax top-k is the model's routing, up to the factor sum(w)
    floor = ctx.op("Expand", [scalar(ctx, -np.inf, DType.float32),
                              ctx.op("Concat", [ctx.op("Shape", [x], end=1), ctx.ints([experts])],
                                     axis=0)])  # fmt: skip
    logits = ctx.op("ScatterElements", [floor, index, ctx.op("Log", [weights])], axis=1)
    attrs = dict(k=int(k), normalize_routing_weights=0)
    if a["gated"]:
        if not a["interleaved"]:
            w_in = _interleave(ctx, w_in, node.inputs[3].shape)
            if b_in:
                b_in = _interleave(ctx, b_in, node.inputs[5].shape)
        attrs.update(activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0,
                     activation_beta=0.0)  # fmt: skip
    else:
        attrs.update(activation_type=a["activation"])
    y = ctx.op("MoE", [x, logits, w_in, b_in, w_out, b_out], domain=MS_DOMAIN, **attrs)
    total = ctx.op("ReduceSum", [weights, ctx.ints([1])], keepdims=1)
    return ctx.op("Mul", [y, total])


def _act(ctx, h: str, activation: str, dtype: DType) -> str:
    if activation == "silu":
        return ctx.op("Mul", [h, ctx.op("Sigmoid", [h])])
    if activation == "relu":
        return ctx.op("Relu", [h])
    return _gelu(ctx, h, "tanh" if activation == "gelu_tanh" else "none", dtype)


def _gathered(ctx, node, x, index, weights, w_in, w_out, b_in, b_out) -> str:
    """Each (token, expert) pair's weights gathered, one batched MatMul per projection."""
    a = node.attrs
    dtype = in_type(node, 0).dtype
    hidden = node.inputs[0].shape[1]
    k = node.inputs[1].shape[1]
    pairs = ctx.op("Reshape", [index, ctx.ints([-1])])  # (S,) with S = T * k
    rows = ctx.op(
        "Reshape",
        [
            ctx.op("Expand", [ctx.op("Unsqueeze", [x, ctx.ints([1])]), ctx.ints([1, k, 1])]),
            ctx.ints([-1, 1, hidden]),
        ],
    )  # (S, 1, H), fmt: skip

    def project(v: str, w: str, b: str) -> str:
        wt = ctx.op("Transpose", [ctx.op("Gather", [w, pairs], axis=0)], perm=[0, 2, 1])
        y = ctx.op("MatMul", [v, wt])  # (S, 1, out)
        if b:
            y = ctx.op("Add", [y, ctx.op("Unsqueeze", [ctx.op("Gather", [b, pairs], axis=0),
                                                       ctx.ints([1])])])  # fmt: skip
        return y

    h = project(rows, w_in, b_in)
    if a["gated"]:
        n = node.inputs[3].shape[1]
        if a["interleaved"]:
            pair = ctx.op("Reshape", [h, ctx.ints([0, 1, n // 2, 2])])
            gate, up = (ctx.op("Squeeze", [p, ctx.ints([3])])
                        for p in ctx.op_n("Split", [pair], 2, axis=3, num_outputs=2))  # fmt: skip
        else:
            gate, up = ctx.op_n("Split", [h], 2, axis=2, num_outputs=2)
        h = ctx.op("Mul", [_act(ctx, gate, a["activation"], dtype), up])
    else:
        h = _act(ctx, h, a["activation"], dtype)
    y = ctx.op("Squeeze", [project(h, w_out, b_out), ctx.ints([1])])  # (S, H)
    y = ctx.op("Mul", [y, ctx.op("Reshape", [weights, ctx.ints([-1, 1])])])
    y = ctx.op("Reshape", [y, ctx.ints([-1, k, hidden])])
    return ctx.op("ReduceSum", [y, ctx.ints([1])], keepdims=0)
