"""The torch function of ``moe_experts`` (tgraph/ir/ops/moe.py): a grouped matmul.

The (token, expert) pairs are sorted by expert once; each expert with tokens then runs its
two linears on its own rows, reading its weights where they lie (``w_in[e]`` is a view),
and adds its weighted rows into the output. One host sync per call (the per-expert counts),
which CUDA graph capture refuses: a captured decode step falls back to eager there
(backends/torch_cuda_graphs.py).

The frontend's ``tgraph::moe_experts`` custom op (tgraph/frontend/moe.py) runs this same
function in eager PyTorch, so a traced model computes what its compiled program computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def activate(h: Tensor, activation: str) -> Tensor:
    if activation == "silu":
        return F.silu(h)
    if activation == "gelu":
        return F.gelu(h)
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if activation == "relu":
        return F.relu(h)
    raise ValueError(f"moe_experts: unknown activation {activation!r}")


def moe_experts(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, w_in: Tensor,
                w_out: Tensor, b_in: Tensor | None = None, b_out: Tensor | None = None, *,
                activation: str, gated: bool = True, interleaved: bool = False) -> Tensor:  # fmt: skip
    return _grouped(x, top_k_index, top_k_weights, w_in.shape[0], lambda e: (w_in[e], w_out[e]),
                    b_in, b_out, activation, gated, interleaved)  # fmt: skip


def moe_experts_int4(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, q_in: Tensor,
                     s_in: Tensor, q_out: Tensor, s_out: Tensor, b_in: Tensor | None = None,
                     b_out: Tensor | None = None, *, block_size: int, activation: str,
                     gated: bool = True, interleaved: bool = False,
                     compute: str = "f32") -> Tensor:  # fmt: skip
    """Each expert with tokens dequantizes its own weights for the call (a temporary of
    one expert at a time), then runs as ``moe_experts``; ``compute="int8"`` rounds each
    projection's input rows per block first."""
    from .torch_quant import _act, unpack_int4

    def weights(e: int) -> tuple[Tensor, Tensor]:
        return (unpack_int4(q_in[e], s_in[e], q_in.shape[2] * block_size),
                unpack_int4(q_out[e], s_out[e], q_out.shape[2] * block_size))  # fmt: skip

    def rows_in(v: Tensor) -> Tensor:
        return _act(v, compute, block_size)

    return _grouped(x, top_k_index, top_k_weights, q_in.shape[0], weights, b_in, b_out,
                    activation, gated, interleaved, rows_in)  # fmt: skip


def moe_experts_int8(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, q_in: Tensor,
                     s_in: Tensor, q_out: Tensor, s_out: Tensor, b_in: Tensor | None = None,
                     b_out: Tensor | None = None, *, activation: str, gated: bool = True,
                     interleaved: bool = False) -> Tensor:  # fmt: skip
    """Like :func:`moe_experts_int4`: each expert with tokens dequantizes its own rows."""

    def weights(e: int) -> tuple[Tensor, Tensor]:
        return (q_in[e].to(s_in.dtype) * s_in[e, :, None],
                q_out[e].to(s_out.dtype) * s_out[e, :, None])  # fmt: skip

    return _grouped(x, top_k_index, top_k_weights, q_in.shape[0], weights, b_in, b_out,
                    activation, gated, interleaved)  # fmt: skip


def _grouped(x, top_k_index, top_k_weights, experts, expert_weights, b_in, b_out, activation,
             gated, interleaved, rows_in=None) -> Tensor:  # fmt: skip
    """The grouped matmul: ``expert_weights(e)`` gives expert e's (w_in, w_out); ``rows_in``
    transforms each projection's input rows first."""
    rows_in = rows_in or (lambda v: v)
    x_in = rows_in(x)  # per-row rounding: once for all of a token's experts
    k = top_k_index.shape[1]
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)  # pairs grouped by expert, tokens in order
    counts = torch.bincount(flat.clamp(0, experts), minlength=experts + 1)[:experts].tolist()
    rows = order // k
    weights = top_k_weights.reshape(-1)[order]
    out = torch.zeros(x.shape, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype,
                      device=x.device)  # fmt: skip
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        take = rows[start : start + n]
        w_in, w_out = expert_weights(e)
        h = F.linear(x_in[take], w_in, None if b_in is None else b_in[e])
        if gated:
            gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else h.chunk(2, dim=-1)
            h = activate(gate, activation) * up
        else:
            h = activate(h, activation)
        y = F.linear(rows_in(h), w_out, None if b_out is None else b_out[e])
        out.index_add_(0, take, (y * weights[start : start + n, None]).to(out.dtype))
        start += n
    return out.to(x.dtype)
