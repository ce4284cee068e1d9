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
    experts, k = w_in.shape[0], top_k_index.shape[1]
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
        h = F.linear(x[take], w_in[e], None if b_in is None else b_in[e])
        if gated:
            gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else h.chunk(2, dim=-1)
            h = activate(gate, activation) * up
        else:
            h = activate(h, activation)
        y = F.linear(h, w_out[e], None if b_out is None else b_out[e])
        out.index_add_(0, take, (y * weights[start : start + n, None]).to(out.dtype))
        start += n
    return out.to(x.dtype)
