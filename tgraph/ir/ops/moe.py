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

import math

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dtypes import DType
from tgraph.ir.ops.registry import REQUIRED, defop

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def activate(h: np.ndarray, activation: str) -> np.ndarray:
    if activation == "silu":
        return h / (1.0 + np.exp(-h))
    if activation == "gelu":
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    if activation == "gelu_tanh":
        return 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
    if activation == "relu":
        return np.maximum(h, 0.0)
    raise IRError(f"moe_experts: unknown activation {activation!r}; known: {ACTIVATIONS}")


def _infer(x, index, weights, w_in, w_out, b_in=None, b_out=None, *, activation, gated,
           interleaved) -> TensorType:  # fmt: skip
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


def _kernel(x, index, weights, w_in, w_out, b_in=None, b_out=None, *, activation, gated,
            interleaved):  # fmt: skip
    acc = np.zeros(x.shape, np.float64)
    for e in np.unique(index):
        if not 0 <= e < w_in.shape[0]:  # an expert-parallel sentinel: no expert here
            continue
        rows, slots = np.nonzero(index == e)
        h = x[rows].astype(np.float64) @ w_in[e].T.astype(np.float64)
        if b_in is not None:
            h = h + b_in[e]
        if gated:
            half = h.shape[1] // 2
            gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else (h[:, :half], h[:, half:])
            a = activate(gate, activation) * up
        else:
            a = activate(h, activation)
        y = a @ w_out[e].T.astype(np.float64)
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
