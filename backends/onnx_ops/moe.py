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

``moe_experts_int4`` (the int4 pipeline's experts) goes to com.microsoft QMoE on the codes
as stored, which takes the mixing weights as an input of their own (``router_weights``):
there the selection logits are 0 and -inf, and nothing is rescaled.
"""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN, ONNX_DTYPE
from tgraph.backends.onnx_ops.base import in_type, lowers, scalar
from tgraph.backends.onnx_ops.elementwise import _gelu
from tgraph.ir import DType


def _kernel_fits(node) -> bool:
    a = node.attrs
    if in_type(node, 0).dtype is not DType.float32:
        return False
    return a["activation"] == "silu" if a["gated"] else a["activation"] in ("relu", "silu")


def _qmoe_fits(ctx, node) -> bool:
    """QMoE takes the codes as stored: gated experts must already be interleaved."""
    a = node.attrs
    return ctx.fused_kernels and _kernel_fits(node) and (not a["gated"] or a["interleaved"])


def _at_load(ctx, value, build):
    """``build(op)``'s result, its ops marked as folded at session load when ``value`` (the
    IR input they transform) is a constant: the graph's array is then read at load only,
    and the generator releases it (``Lowering.at_load``), so no second copy stays."""
    if value.const is None:
        return build(ctx.op)
    return build(lambda *args, **kw: ctx.at_load(ctx.op(*args, **kw)))


def _interleave(ctx, w: str, value) -> str:
    """[gate | up] rows (E, 2I[, H]) -> gate0, up0, gate1, up1, ... (E, 2I[, H])."""
    e, n = value.shape[0], value.shape[1]
    rest = list(value.shape[2:])
    perm = [0, 2, 1] + ([3] if rest else [])

    def build(op):
        split = op("Reshape", [w, ctx.ints([e, 2, n // 2, *rest])])
        return op("Reshape", [op("Transpose", [split], perm=perm), ctx.ints([e, n, *rest])])

    return _at_load(ctx, value, build)


@lowers("moe_experts")
def _moe_experts(ctx, node, x, index, weights, w_in, w_out, b_in="", b_out=""):
    if ctx.fused_kernels and _kernel_fits(node):
        return _ort_moe(ctx, node, x, index, weights, w_in, w_out, b_in, b_out)
    return _gathered(ctx, node, x, index, weights, w_in, w_out, b_in, b_out)


def _routing(ctx, node, x: str, fill: float) -> str:
    """A (tokens, E) tensor of ``fill``: the dense routing the kernels take."""
    rows = ctx.op("Concat", [ctx.op("Shape", [x], end=1), ctx.ints([node.inputs[3].shape[0]])],
                  axis=0)  # fmt: skip
    return ctx.op("Expand", [scalar(ctx, fill, DType.float32), rows])


def _kernel_attrs(node) -> dict:
    """The routing and activation attributes MoE and QMoE share: the given top k, no
    renormalization, SwiGLU with interleaved rows (alpha 1, beta 0: silu(gate) * up)."""
    a = node.attrs
    attrs = dict(k=int(node.inputs[1].shape[1]), normalize_routing_weights=0)
    if a["gated"]:
        attrs.update(activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0,
                     activation_beta=0.0)  # fmt: skip
    else:
        attrs.update(activation_type=a["activation"])
    return attrs


def _ort_moe(ctx, node, x, index, weights, w_in, w_out, b_in, b_out) -> str:
    a = node.attrs
    # logits whose softmax top-k is the model's routing, up to the factor sum(w)
    floor = _routing(ctx, node, x, -np.inf)
    logits = ctx.op("ScatterElements", [floor, index, ctx.op("Log", [weights])], axis=1)
    if a["gated"] and not a["interleaved"]:
        w_in = _interleave(ctx, w_in, node.inputs[3])
        if b_in:
            b_in = _interleave(ctx, b_in, node.inputs[5])
    y = ctx.op("MoE", [x, logits, w_in, b_in, w_out, b_out], domain=MS_DOMAIN,
               **_kernel_attrs(node))  # fmt: skip
    total = ctx.op("ReduceSum", [weights, ctx.ints([1])], keepdims=1)
    return ctx.op("Mul", [y, total])


def _act(ctx, h: str, activation: str, dtype: DType) -> str:
    if activation == "silu":
        return ctx.op("Mul", [h, ctx.op("Sigmoid", [h])])
    if activation == "relu":
        return ctx.op("Relu", [h])
    return _gelu(ctx, h, "tanh" if activation == "gelu_tanh" else "none", dtype)


def _gathered(ctx, node, x, index, weights, w_in, w_out, b_in, b_out, block: int = 0) -> str:
    """Each (token, expert) pair's weights gathered, one batched MatMul per projection, on
    the gathered weights as they lie ((S, out, in) @ (S, in, 1): no transposed copy).
    ``block`` > 0 rounds each projection's input rows to int8 per block first (int4
    experts' ``compute="int8"``)."""
    a = node.attrs
    dtype = in_type(node, 0).dtype
    hidden = node.inputs[0].shape[1]
    k = node.inputs[1].shape[1]
    if block:
        x = _round_rows(ctx, x, hidden, block)
    pairs = ctx.op("Reshape", [index, ctx.ints([-1])])  # (S,) with S = T * k
    rows = ctx.op("Expand", [ctx.op("Unsqueeze", [x, ctx.ints([1])]), ctx.ints([1, k, 1])])
    rows = ctx.op("Reshape", [rows, ctx.ints([-1, hidden, 1])])  # (S, H, 1)

    def project(v: str, w: str, b: str) -> str:
        y = ctx.op("MatMul", [ctx.op("Gather", [w, pairs], axis=0), v])  # (S, out, 1)
        if b:
            bias = ctx.op("Gather", [b, pairs], axis=0)
            y = ctx.op("Add", [y, ctx.op("Unsqueeze", [bias, ctx.ints([2])])])
        return y

    h = project(rows, w_in, b_in)
    if a["gated"]:
        n = node.inputs[3].shape[1]
        if a["interleaved"]:
            pair = ctx.op("Reshape", [h, ctx.ints([0, n // 2, 2])])
            gate, up = ctx.op_n("Split", [pair], 2, axis=2, num_outputs=2)
        else:
            gate, up = ctx.op_n("Split", [h], 2, axis=1, num_outputs=2)
        h = ctx.op("Mul", [_act(ctx, gate, a["activation"], dtype), up])  # (S, I, 1)
    else:
        h = _act(ctx, h, a["activation"], dtype)
    if block:
        inner = node.inputs[4].shape[2]
        h = _round_rows(ctx, ctx.op("Reshape", [h, ctx.ints([-1, inner])]), inner, block)
        h = ctx.op("Reshape", [h, ctx.ints([-1, inner, 1])])
    y = ctx.op("Squeeze", [project(h, w_out, b_out), ctx.ints([2])])  # (S, H)
    y = ctx.op("Mul", [y, ctx.op("Reshape", [weights, ctx.ints([-1, 1])])])
    y = ctx.op("Reshape", [y, ctx.ints([-1, k, hidden])])
    return ctx.op("ReduceSum", [y, ctx.ints([1])], keepdims=0)


def _round_rows(ctx, v: str, width: int, block: int) -> str:
    """(rows, width) rounded to int8 per row and block (the IR's quantize_activations;
    width a whole number of blocks)."""
    grouped = ctx.op("Reshape", [v, ctx.ints([-1, width // block, block])])
    amax = ctx.op("ReduceMax", [ctx.op("Abs", [grouped]), ctx.ints([2])], keepdims=1)
    scale = ctx.op("Div", [amax, scalar(ctx, 127.0, DType.float32)])
    positive = ctx.op("Greater", [scale, scalar(ctx, 0.0, DType.float32)])
    safe = ctx.op("Where", [positive, scale, scalar(ctx, 1.0, DType.float32)])
    inv = ctx.op("Where", [positive, ctx.op("Reciprocal", [safe]), scalar(ctx, 0.0, DType.float32)])
    q = ctx.op("Mul", [ctx.op("Round", [ctx.op("Mul", [grouped, inv])]), scale])
    return ctx.op("Reshape", [q, ctx.ints([-1, width])])


@lowers("moe_experts_int8")
def _moe_experts_int8(ctx, node, x, index, weights, q_in, s_in, q_out, s_out, b_in="", b_out=""):
    """com.microsoft QMoE with 8-bit experts, one scale per row (no block_size): its codes
    are unsigned with zero point 128, so the graph's int8 codes become q + 128 by ONNX ops
    that ORT folds at load. The fallback dequantizes them the same way into fp32."""

    def unsigned(op, q):
        wide = op("Cast", [q], to=ONNX_DTYPE[DType.int16])
        return op("Cast", [op("Add", [wide, ctx.const(np.int16(128))])], to=ONNX_DTYPE[DType.uint8])

    if _qmoe_fits(ctx, node):
        codes = [_at_load(ctx, node.inputs[i], lambda op, q=q: unsigned(op, q))
                 for i, q in ((3, q_in), (5, q_out))]  # fmt: skip
        return _qmoe(ctx, node, x, index, weights, codes, s_in, s_out, b_in, b_out,
                     expert_weight_bits=8)  # fmt: skip

    def dequantized(op, q, s):
        w = op("Cast", [q], to=ONNX_DTYPE[DType.float32])
        return op("Mul", [w, op("Unsqueeze", [s, ctx.ints([2])])])

    w_in, w_out = (_at_load(ctx, node.inputs[i], lambda op, q=q, s=s: dequantized(op, q, s))
                   for i, q, s in ((3, q_in, s_in), (5, q_out, s_out)))  # fmt: skip
    plain = _FloatView(node)
    if ctx.fused_kernels and _kernel_fits(node):
        return _ort_moe(ctx, plain, x, index, weights, w_in, w_out, b_in, b_out)
    return _gathered(ctx, plain, x, index, weights, w_in, w_out, b_in, b_out)


def _qmoe(ctx, node, x, index, weights, codes, s_in, s_out, b_in, b_out, **attrs) -> str:
    """QMoE on ``codes`` (fc1, fc2) and their scales: the model's routing as selection
    logits (0 at each token's k experts, -inf elsewhere) and ``router_weights``."""
    picked = ctx.op("Expand", [scalar(ctx, 0.0, DType.float32), ctx.op("Shape", [index])])
    select = ctx.op("ScatterElements", [_routing(ctx, node, x, -np.inf), index, picked], axis=1)
    mixing = ctx.op("ScatterElements", [_routing(ctx, node, x, 0.0), index, weights], axis=1)
    level = 4 if node.attrs.get("compute") == "int8" else 0  # int8 activations per block
    attrs.update(_kernel_attrs(node), accuracy_level=level)
    inputs = [x, select, codes[0], s_in, b_in, codes[1], s_out, b_out,
              "", "", "", "", "", "", mixing]  # fmt: skip
    return ctx.op("QMoE", inputs, domain=MS_DOMAIN, **attrs)


@lowers("moe_experts_int4")
def _moe_experts_int4(ctx, node, x, index, weights, q_in, s_in, q_out, s_out, b_in="", b_out=""):
    """com.microsoft QMoE on the codes as stored: (E, N, G, B/2) is QMoE's (E, N, K/2), the
    same bytes, reshaped. The routing goes in as selection logits (0 at each token's k
    experts, -inf elsewhere) and ``router_weights`` (the model's weights at those experts),
    so no softmax touches them. Where the kernel does not fit, the codes are dequantized by
    ONNX ops (folded at session load into fp32 weights) and lowered as ``moe_experts``."""
    a = node.attrs
    if _qmoe_fits(ctx, node):
        codes = [_at_load(ctx, node.inputs[i], lambda op, q=q: op("Reshape", [q, ctx.ints([0, 0, -1])]))
                 for i, q in ((3, q_in), (5, q_out))]  # fmt: skip
        return _qmoe(ctx, node, x, index, weights, codes, s_in, s_out, b_in, b_out,
                     expert_weight_bits=4, block_size=int(a["block_size"]))  # fmt: skip
    w_in, w_out = (_at_load(ctx, node.inputs[i], lambda op, q=q, s=s: _dequantized(ctx, op, q, s))
                   for i, q, s in ((3, q_in, s_in), (5, q_out, s_out)))  # fmt: skip
    plain = _FloatView(node)
    if a["compute"] == "int8":  # ORT's MoE kernel has no int8 rounding between its GEMMs
        block = int(a["block_size"])
        return _gathered(ctx, plain, x, index, weights, w_in, w_out, b_in, b_out, block)
    if ctx.fused_kernels and _kernel_fits(node):
        return _ort_moe(ctx, plain, x, index, weights, w_in, w_out, b_in, b_out)
    return _gathered(ctx, plain, x, index, weights, w_in, w_out, b_in, b_out)


def _dequantized(ctx, op, codes: str, scales: str) -> str:
    """(E, N, G, B/2) u8 codes and (E, N, G) scales -> fp32 (E, N, G*B), by ONNX ops."""
    low = op("BitwiseAnd", [codes, ctx.const(np.array(15, np.uint8))])
    high = op("BitShift", [codes, ctx.const(np.array(4, np.uint8))], direction="RIGHT")
    pairs = [op("Unsqueeze", [v, ctx.ints([4])]) for v in (low, high)]
    q = op("Cast", [op("Concat", pairs, axis=4)], to=1)  # (E, N, G, B/2, 2) float
    q = op("Reshape", [q, ctx.ints([0, 0, 0, -1])])  # (E, N, G, B)
    w = op("Mul", [op("Sub", [q, scalar(ctx, 8.0, DType.float32)]),
                   op("Unsqueeze", [scales, ctx.ints([3])])])  # fmt: skip
    return op("Reshape", [w, ctx.ints([0, 0, -1])])


class _Dequantized:
    """The fp32 (E, N, K) weight that codes stand for: its shape, and ``const`` not None
    when the codes are constants (``_at_load`` may then mark what transforms it)."""

    def __init__(self, codes, block: int):
        self.shape = (*codes.shape[:2], codes.shape[2] * block)
        self.const = codes.const


class _FloatView:
    """``moe_experts_int4`` / ``_int8`` seen as the ``moe_experts`` its dequantized weights
    make: the shapes and attributes the fp32 lowerings read."""

    def __init__(self, node):
        block = node.attrs.get("block_size", 1)  # int8: (E, N, K) codes, one per weight
        self.inputs = [*node.inputs[:3], *(_Dequantized(q, block) for q in node.inputs[3:7:2]),
                       *node.inputs[7:]]  # fmt: skip
        self.attrs = {k: v for k, v in node.attrs.items() if k not in ("block_size", "compute")}
        self.outputs = node.outputs
