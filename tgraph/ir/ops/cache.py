"""Attention over a preallocated KV cache: the one op a causal LM's generation step needs.

cache_attention(q, k, v, k_cache, v_cache, past_len, q_len)
        {num_heads, kv_heads, scale, window, softcap} -> (out, k_cache', v_cache')

  q (B, T, H*D), k (B, T, Hkv*D), v (B, T, Hkv*Dv): the new tokens (after rotary),
  k_cache (B, Hkv, L, D), v_cache (B, Hkv, L, Dv): the state, L slots per sequence,
  past_len (B,) int64: tokens already in row b's cache (its slots 0 .. past_len[b]-1),
  q_len (B,) int64: how many of the T new rows of sequence b are real (right padding).

Row b's real new tokens t < q_len[b] are written at slots past_len[b] + t, and each attends
to slots j <= past_len[b] + t (causal; with ``window`` > 0 also j > past_len[b] + t - window,
Mistral's sliding window). A cache slot is the token's position, so a sequence never has
padding inside its cache: left-padded prompts are compacted before prefill. Output rows
t >= q_len[b] are zero and write nothing. ``softcap`` > 0 applies softcap * tanh(s / softcap)
to the scores (Gemma 2). GQA: query head h reads cache head h // (H / Hkv).

Outputs 1 and 2 are the updated caches. The op is functional, like every IR op, but it
declares them as updates of inputs 3 and 4 (``OpDef.updates``), so a backend may write the
cache in place and bind each state input and output to one buffer.
"""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dtypes import DType
from tgraph.ir.ops.registry import REQUIRED, defop


def _cache_attention_infer(q, k, v, kc, vc, past_len, q_len, num_heads, kv_heads, scale,
                           window, softcap) -> list[TensorType]:  # fmt: skip
    if num_heads % kv_heads:
        raise IRError(f"cache_attention: num_heads {num_heads} is not a multiple of {kv_heads}")
    if any(t.rank != 3 for t in (q, k, v)) or kc.rank != 4 or vc.rank != 4:
        raise IRError("cache_attention: q, k, v must have rank 3 and the caches rank 4")
    if len({q.dtype, k.dtype, v.dtype, kc.dtype, vc.dtype}) != 1:
        raise IRError("cache_attention: q, k, v and the caches must share one dtype")
    for name, t in (("past_len", past_len), ("q_len", q_len)):
        if t.rank != 1 or t.dtype != DType.int64:
            raise IRError(f"cache_attention: {name} must be int64 of shape (batch,), got {t}")
    if kc.shape[1] != kv_heads or vc.shape[1] != kv_heads:
        raise IRError(
            f"cache_attention: cache head dims {kc.shape[1]}, {vc.shape[1]} != {kv_heads}"
        )
    head, dv = kc.shape[3], vc.shape[3]
    if not isinstance(head, int) or not isinstance(dv, int):
        raise IRError("cache_attention: the caches' head sizes must be static")
    if q.shape[2] != num_heads * head or k.shape[2] != kv_heads * head:
        raise IRError(f"cache_attention: q/k widths {q.shape[2]}, {k.shape[2]} != heads x {head}")
    if v.shape[2] != kv_heads * dv:
        raise IRError(f"cache_attention: v width {v.shape[2]} != {kv_heads} x {dv}")
    out = TensorType(q.dtype, (q.shape[0], q.shape[1], num_heads * dv))
    return [out, kc, vc]


def cache_attention_reference(q, k, v, k_cache, v_cache, past_len, q_len, num_heads, kv_heads,
                              scale, window, softcap):  # fmt: skip
    """The definition above, one sequence and one head group at a time, in float64."""
    b, t, _ = q.shape
    d, dv = k_cache.shape[3], v_cache.shape[3]
    group = num_heads // kv_heads
    kc, vc = k_cache.copy(), v_cache.copy()
    out = np.zeros((b, t, num_heads, dv), dtype=np.float64)
    qh = q.reshape(b, t, num_heads, d).astype(np.float64)
    kh, vh = k.reshape(b, t, kv_heads, d), v.reshape(b, t, kv_heads, dv)
    for i in range(b):
        p, n = int(past_len[i]), int(q_len[i])
        if p < 0 or n < 0 or n > t or p + n > kc.shape[2]:
            raise IRError(f"cache_attention: row {i} writes slots {p}..{p + n} of {kc.shape[2]}")
        kc[i, :, p : p + n] = kh[i, :n].transpose(1, 0, 2)
        vc[i, :, p : p + n] = vh[i, :n].transpose(1, 0, 2)
        keys = np.repeat(kc[i, :, : p + n], group, axis=0).astype(np.float64)  # (H, p+n, D)
        vals = np.repeat(vc[i, :, : p + n], group, axis=0).astype(np.float64)
        scores = np.einsum("thd,hjd->htj", qh[i, :n], keys) * scale  # (H, n, p+n)
        if softcap > 0:
            scores = softcap * np.tanh(scores / softcap)
        pos = p + np.arange(n)[:, None]  # each query row's own slot
        slot = np.arange(p + n)[None, :]
        visible = (slot <= pos) & ((slot > pos - window) if window > 0 else True)
        scores = np.where(visible, scores, -np.inf)
        w = np.exp(scores - scores.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        out[i, :n] = np.einsum("htj,hjd->thd", w, vals)
    return out.reshape(b, t, num_heads * dv).astype(q.dtype), kc, vc


defop(
    "cache_attention",
    infer=_cache_attention_infer,
    kernel=cache_attention_reference,
    attrs={
        "num_heads": REQUIRED,
        "kv_heads": REQUIRED,
        "scale": REQUIRED,
        "window": 0,
        "softcap": 0.0,
    },  # fmt: skip
    inputs=7,
    updates={1: 3, 2: 4},
    doc="Causal attention of new tokens over a KV cache they are written into "
    "(outputs 1, 2 update inputs 3, 4).",
)
