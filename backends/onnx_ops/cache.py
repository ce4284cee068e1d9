"""Lowering of ``cache_attention`` to com.microsoft GroupQueryAttention (the mapping of each
input and attribute, and why the step runs through I/O binding: backends/ort_cache.py).

With rotary tables (cos_table, sin_table: (P, R/2)) GQA rotates q and k itself
(``do_rotary=1``, the tables as ``cos_cache``/``sin_cache``): with ``query_seqlens`` given,
query row s of entry b is at position P_b + s with P_b = seqlens_k[b] + 1 - query_seqlens[b]
= past_len[b], which is the op's "a slot is a position". ORT's CPU kernel accepts that only
for head sizes that are multiples of 16 and R/2 a multiple of 8; otherwise q and k go
through com.microsoft RotaryEmbedding (same tables, positions past_len + t) before a GQA
without rotary.
"""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_lowering import MS_DOMAIN, ONNX_DTYPE
from tgraph.backends.onnx_ops.base import lowers
from tgraph.ir import DType, Node


def gqa_rotary_fits(head: int, rotary_half: int) -> bool:
    """Whether ORT's GroupQueryAttention accepts do_rotary for this head size and table."""
    return head % 16 == 0 and rotary_half % 8 == 0


@lowers("cache_attention")
def _cache_attention(ctx, node, q, k, v, k_cache, v_cache, past_len, q_len, cos="", sin=""):
    a = node.attrs
    rotary: dict[str, int] = {}
    if cos:
        head, half = node.inputs[3].shape[3], node.inputs[7].shape[1]
        if gqa_rotary_fits(head, half):
            rotary = dict(do_rotary=1, rotary_interleaved=int(a["rotary_interleaved"]))
        else:
            q, k = (_rotary_embedding(ctx, node, x, heads, past_len, cos, sin)
                    for x, heads in ((q, a["num_heads"]), (k, a["kv_heads"])))  # fmt: skip
            cos = sin = ""
    inputs = [q, k, v, k_cache, v_cache, *_lengths(ctx, node, past_len, q_len), cos, sin]
    inputs += [""] * 7 + [_int32(ctx, q_len)]  # no position ids, bias, sink, ...
    return ctx.op_n(
        "GroupQueryAttention",
        inputs,
        3,
        domain=MS_DOMAIN,
        num_heads=a["num_heads"],
        kv_num_heads=a["kv_heads"],
        scale=float(a["scale"]),
        local_window_size=a["window"] if a["window"] > 0 else -1,
        softcap=float(a["softcap"]),
        **rotary,
    )


def _int32(ctx, x: str) -> str:
    """``x`` cast to int32 once per graph (every layer's GQA reads the same lengths)."""
    return ctx.shared(("int32", x), lambda: ctx.op("Cast", [x], to=ONNX_DTYPE[DType.int32]))


def _lengths(ctx, node: Node, past_len: str, q_len: str) -> tuple[str, str]:
    """GQA's seqlens_k (past + new tokens - 1 per row) and total_sequence_length (the cache
    capacity), int32, emitted once for all layers."""

    def seqlens() -> str:
        total = ctx.op("Add", [past_len, q_len])
        return _int32(ctx, ctx.op("Sub", [total, ctx.const(np.int64(1))]))

    capacity = ctx.dim(node.inputs[3].shape[2], scalar=True)
    return ctx.shared(("seqlens_k", past_len, q_len), seqlens), _int32(ctx, capacity)


def _rotary_embedding(ctx, node: Node, x: str, heads: int, past_len: str, cos: str, sin: str):
    """x (B, T, heads*D) rotated at positions past_len[b] + t by RotaryEmbedding."""
    seq = ctx.dim(node.inputs[0].shape[1], scalar=True)
    steps = ctx.op("Range", [ctx.const(np.int64(0)), seq, ctx.const(np.int64(1))])
    positions = ctx.op("Add", [ctx.op("Unsqueeze", [past_len, ctx.ints([1])]), steps])
    rotary_dim = 2 * node.inputs[7].shape[1]
    return ctx.op(
        "RotaryEmbedding",
        [x, positions, cos, sin],
        domain=MS_DOMAIN,
        num_heads=heads,
        rotary_embedding_dim=rotary_dim,
        interleaved=int(node.attrs["rotary_interleaved"]),
    )
