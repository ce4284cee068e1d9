"""``moe_experts``: a mixture-of-experts layer's routed experts, as one op.

    moe_experts(x, top_k_index, top_k_weights, w_in, w_out, [b_in], [b_out])
        {activation, gated, interleaved} -> y

x (T, H) holds T token rows; top_k_index (T, k) int64 names each token's experts, and
top_k_weights (T, k) their mixing weights (the router, and any renormalization of its
weights, stay ops of their own before this one). Expert e has w_in[e] (N, H) and w_out[e]
(H, I), with the biases b_in[e] (N,) and b_out[e] (H,) when given:

    h = w_in[e] @ x[t] + b_in[e]
    a = act(gate) * up   (gated: N = 2I; gate, up = h[:I], h[I:], or h[0::2], h[1::2]
                          when interleaved)
    a = act(h)           (not gated: N = I)
    y[t] = sum over j of top_k_weights[t, j] * (w_out[e] @ a + b_out[e]),  e = top_k_index[t, j]

(an index outside 0..E-1, transformers' expert-parallel sentinel, adds nothing.)

act is ``silu``, ``gelu`` (erf), ``gelu_tanh`` or ``relu``. This is transformers'
``ExpertsInterface`` contract (hidden states, top-k index, top-k weights), which
tgraph/frontend/moe.py traces into this op. Each token reads only its k experts' weights:
a backend runs it as a grouped matmul over the tokens routed to each expert, with no copy of
a weight (the plain-ops form gathers k experts' weights per token).
"""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dtypes import DType
from tgraph.ir.ops.elementwise import _gelu
from tgraph.ir.ops.quant import quantize_activations, unpack_int4
from tgraph.ir.ops.registry import REQUIRED, defop

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def activate(h: np.ndarray, activation: str) -> np.ndarray:
    if activation == "silu":
        return h / (1.0 + np.exp(-h))
    if activation in ("gelu", "gelu_tanh"):
        return _gelu(h, "tanh" if activation == "gelu_tanh" else "none")
    if activation == "relu":
        return np.maximum(h, 0.0)
    raise IRError(f"moe_experts: unknown activation {activation!r}; known: {ACTIVATIONS}")


def _infer(x, index, weights, w_in, w_out, b_in=None, b_out=None, *, activation, gated=True,
           interleaved=False) -> TensorType:  # fmt: skip
    if activation not in ACTIVATIONS:
        raise IRError(f"moe_experts: unknown activation {activation!r}; known: {ACTIVATIONS}")
    if x.rank != 2 or index.rank != 2 or weights.rank != 2:
        raise IRError(
            f"moe_experts: x {x}, top_k_index {index}, top_k_weights {weights} must be 2-D"
        )
    if index.dtype != DType.int64 or weights.dtype != x.dtype:
        raise IRError(
            f"moe_experts: top_k_index must be int64 and top_k_weights {x.dtype}, got "
            f"{index.dtype}, {weights.dtype}"
        )
    if w_in.rank != 3 or w_out.rank != 3 or w_in.dtype != x.dtype or w_out.dtype != x.dtype:
        raise IRError(f"moe_experts: expert weights {w_in}, {w_out} must be 3-D of {x.dtype}")
    experts, n, hidden = w_in.shape
    inter = w_out.shape[2]
    want_n = 2 * inter if gated else inter
    if (hidden, w_out.shape[:2], n) != (x.shape[1], (experts, hidden), want_n):
        raise IRError(
            f"moe_experts: w_in {list(w_in.shape)} and w_out {list(w_out.shape)} are not "
            f"(E, {'2I' if gated else 'I'}, H) and (E, H, I) for x {list(x.shape)}"
        )
    for b, width, name in ((b_in, n, "b_in"), (b_out, hidden, "b_out")):
        if b is not None and tuple(b.shape) != (experts, width):
            raise IRError(f"moe_experts: {name} {list(b.shape)} is not ({experts}, {width})")
    return x


def _kernel(x, index, weights, w_in, w_out, b_in=None, b_out=None, *, activation, gated=True,
            interleaved=False, rows_in=None):  # fmt: skip
    """``rows_in``: applied to each projection's input rows first (int8 compute's rounding)."""
    rows_in = rows_in or (lambda v: v)
    x_in = rows_in(x)  # per-row rounding: once for all of a token's experts
    acc = np.zeros(x.shape, np.float64)
    for e in np.unique(index):
        if not 0 <= e < w_in.shape[0]:  # an expert-parallel sentinel: no expert here
            continue
        rows, slots = np.nonzero(index == e)
        h = x_in[rows].astype(np.float64) @ w_in[e].T.astype(np.float64)
        if b_in is not None:
            h = h + b_in[e]
        if gated:
            half = h.shape[1] // 2
            gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else (h[:, :half], h[:, half:])
            a = activate(gate, activation) * up
        else:
            a = activate(h, activation)
        y = rows_in(a).astype(np.float64) @ w_out[e].T.astype(np.float64)
        if b_out is not None:
            y = y + b_out[e]
        np.add.at(acc, rows, y * weights[rows, slots][:, None])
    return acc.astype(x.dtype)


defop(
    "moe_experts",
    infer=_infer,
    kernel=_kernel,
    attrs={"activation": REQUIRED, "gated": True, "interleaved": False},
    inputs=(5, 7),
    doc="A mixture-of-experts layer's routed experts: each token's k experts, weighted.",
)


# -- int4 experts ----------------------------------------------------------------------------


def unpack_experts(codes: np.ndarray, scales: np.ndarray, in_features: int) -> np.ndarray:
    """The fp32 (E, N, K) expert weights that ``moe_experts_int4`` codes (E, N, G, B/2) and
    scales (E, N, G) stand for: each expert's rows unpacked as ``linear_int4``'s."""
    experts, n = codes.shape[:2]
    flat = unpack_int4(codes.reshape(experts * n, *codes.shape[2:]),
                       scales.reshape(experts * n, -1), in_features)  # fmt: skip
    return flat.reshape(experts, n, in_features)


def _int4_infer(x, index, weights, q_in, s_in, q_out, s_out, b_in=None, b_out=None, *,
                block_size, activation, gated=True, interleaved=False,
                compute="f32") -> TensorType:  # fmt: skip
    if compute not in ("f32", "int8"):
        raise IRError(f"moe_experts_int4: compute={compute!r}, want f32 or int8")
    for q, s, name in ((q_in, s_in, "w_in"), (q_out, s_out, "w_out")):
        if q.dtype != DType.uint8 or q.rank != 4 or s.rank != 3 or s.dtype != x.dtype:
            raise IRError(f"moe_experts_int4: {name} codes {q} / scales {s} are not "
                          f"(E, N, G, B/2) u8 / (E, N, G) {x.dtype}")  # fmt: skip
        if tuple(s.shape) != tuple(q.shape[:3]) or q.shape[3] * 2 != block_size:
            raise IRError(f"moe_experts_int4: {name} codes {list(q.shape)} and scales "
                          f"{list(s.shape)} are not blocks of {block_size}")  # fmt: skip
    experts, n, groups, _ = q_in.shape
    hidden = x.shape[1]
    w_in = TensorType(x.dtype, (experts, n, groups * block_size))
    w_out = TensorType(x.dtype, (q_out.shape[0], q_out.shape[1], q_out.shape[2] * block_size))
    if w_in.shape[2] != hidden:
        raise IRError(f"moe_experts_int4: w_in holds {w_in.shape[2]} input features, x {hidden}")
    inter = n // 2 if gated else n
    w_out = TensorType(x.dtype, (*w_out.shape[:2], inter))
    if q_out.shape[2] * block_size != inter:
        raise IRError(f"moe_experts_int4: w_out holds {q_out.shape[2] * block_size} input "
                      f"features, the experts' inner width is {inter}")  # fmt: skip
    return _infer(x, index, weights, w_in, w_out, b_in, b_out, activation=activation,
                  gated=gated, interleaved=interleaved)  # fmt: skip


def _int4_kernel(x, index, weights, q_in, s_in, q_out, s_out, b_in=None, b_out=None, *,
                 block_size, activation, gated=True, interleaved=False, compute="f32"):  # fmt: skip
    rows_in = None
    if compute == "int8":

        def rows_in(v):
            return quantize_activations(v, block_size)

    w_in = unpack_experts(q_in, s_in, q_in.shape[2] * block_size)
    w_out = unpack_experts(q_out, s_out, q_out.shape[2] * block_size)
    return _kernel(x, index, weights, w_in, w_out, b_in, b_out,
                   activation=activation, gated=gated, interleaved=interleaved,
                   rows_in=rows_in)  # fmt: skip


defop(
    "moe_experts_int4",
    infer=_int4_infer,
    kernel=_int4_kernel,
    attrs={
        "block_size": REQUIRED,
        "activation": REQUIRED,
        "gated": True,
        "interleaved": False,
        "compute": "f32",
    },  # fmt: skip
    inputs=(7, 9),
    doc="moe_experts with block-wise int4 expert weights: codes (E, N, G, B/2) u8 (low nibble "
    "first, value q - 8) and scales (E, N, G); the input features are G * B, no padding. "
    "compute=int8 rounds each projection's input rows to int8 per block first, as "
    "linear_int4's.",
)


# -- int8 experts ----------------------------------------------------------------------------


def _int8_infer(x, index, weights, q_in, s_in, q_out, s_out, b_in=None, b_out=None, *,
                activation, gated=True, interleaved=False) -> TensorType:  # fmt: skip
    for q, s, name in ((q_in, s_in, "w_in"), (q_out, s_out, "w_out")):
        if q.dtype != DType.int8 or q.rank != 3 or tuple(s.shape) != tuple(q.shape[:2]):
            raise IRError(f"moe_experts_int8: {name} codes {q} / scales {s} are not "
                          f"(E, N, K) i8 / (E, N)")  # fmt: skip
        if s.dtype != x.dtype:
            raise IRError(f"moe_experts_int8: {name} scales are {s.dtype}, x {x.dtype}")
    w_in, w_out = (TensorType(x.dtype, q.shape) for q in (q_in, q_out))
    return _infer(x, index, weights, w_in, w_out, b_in, b_out, activation=activation,
                  gated=gated, interleaved=interleaved)  # fmt: skip


def dequantize_int8_experts(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(E, N, K) int8 codes and (E, N) scales -> fp32 (E, N, K)."""
    return codes.astype(np.float32) * scales[..., None].astype(np.float32)


def _int8_kernel(x, index, weights, q_in, s_in, q_out, s_out, b_in=None, b_out=None, *,
                 activation, gated=True, interleaved=False):  # fmt: skip
    w_in, w_out = dequantize_int8_experts(q_in, s_in), dequantize_int8_experts(q_out, s_out)
    return _kernel(x, index, weights, w_in, w_out, b_in, b_out, activation=activation,
                   gated=gated, interleaved=interleaved)  # fmt: skip


defop(
    "moe_experts_int8",
    infer=_int8_infer,
    kernel=_int8_kernel,
    attrs={"activation": REQUIRED, "gated": True, "interleaved": False},
    inputs=(7, 9),
    doc="moe_experts with weight-only int8 experts: symmetric codes (E, N, K) i8 and one "
    "scale per expert row (E, N), as linear_int8w's per channel.",
)
