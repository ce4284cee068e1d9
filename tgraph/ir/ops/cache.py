"""Attention over a preallocated KV cache: the one op a causal LM's generation step needs.

cache_attention(q, k, v, k_cache, v_cache, past_len, q_len[, cos_table, sin_table])
        {num_heads, kv_heads, scale, window, softcap, rotary_interleaved}
        -> (out, k_cache', v_cache')

  q (B, T, H*D), k (B, T, Hkv*D), v (B, T, Hkv*Dv): the new tokens (after rotary, unless
    the tables are given),
  k_cache (B, Hkv, L, D), v_cache (B, Hkv, L, Dv): the state, L slots per sequence,
  past_len (B,) int64: tokens already in row b's cache (its slots 0 .. past_len[b]-1),
  q_len (B,) int64: how many of the T new rows of sequence b are real (right padding).

Row b's real new tokens t < q_len[b] are written at slots past_len[b] + t, and each attends
to slots j <= past_len[b] + t (causal; with ``window`` > 0 also j > past_len[b] + t - window,
Mistral's sliding window). A cache slot is the token's position, so a sequence never has
padding inside its cache: left-padded prompts are compacted before prefill. Output rows
t >= q_len[b] are zero and write nothing. ``softcap`` > 0 applies softcap * tanh(s / softcap)
to the scores (Gemma 2). GQA: query head h reads cache head h // (H / Hkv).

Rotary inside the op. With cos_table, sin_table (P, R/2), R <= D even, the op first rotates
the first R dims of every q and k head of token t by the table row of its position, which is
its slot p = past_len[b] + t (dims R.. pass through): with c = cos_table[p], s = sin_table[p]
and the pairs (x1, x2) = (x[:R/2], x[R/2:R]) (rotate-half, as HF Llama and GPT-NeoX), or
(x[0:R:2], x[1:R:2]) with ``rotary_interleaved`` (GPT-J), y1 = x1*c - x2*s, y2 = x2*c + x1*s.
So rotary(x, cat(c, c), cat(s, s)) before the op equals the table form (passes/
fold_cache_rotary.py folds it), and so do GroupQueryAttention's do_rotary and cos/sin_cache.

Outputs 1 and 2 are the updated caches. The op is functional, like every IR op, but it
declares them as updates of inputs 3 and 4 (``OpDef.updates``), so a backend may write the
cache in place and bind each state input and output to one buffer.
"""

from __future__ import annotations

import numpy as np

from tgraph.ir.core import IRError, TensorType
from tgraph.ir.dtypes import DType
from tgraph.ir.ops.registry import REQUIRED, defop


# 9 inputs is more than the registry pads with None (8), hence the defaults of cos and sin.
def _cache_attention_infer(q, k, v, kc, vc, past_len, q_len, cos=None, sin=None, *, num_heads,
                           kv_heads, scale, window, softcap,
                           rotary_interleaved=False) -> list[TensorType]:  # fmt: skip
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
    _check_tables(cos, sin, head, q.dtype)
    out = TensorType(q.dtype, (q.shape[0], q.shape[1], num_heads * dv))
    return [out, kc, vc]


def _check_tables(cos, sin, head, dtype) -> None:
    if (cos is None) != (sin is None):
        raise IRError("cache_attention: give both rotary tables (cos_table, sin_table) or none")
    if cos is None:
        return
    if cos.rank != 2 or tuple(cos.shape) != tuple(sin.shape) or cos.dtype != dtype:
        raise IRError(f"cache_attention: rotary tables {cos}, {sin} must be {dtype} (P, R/2)")
    half = cos.shape[1]
    if not isinstance(half, int) or not 0 < 2 * half <= head:
        raise IRError(f"cache_attention: rotary width 2 x {half} exceeds head size {head}")


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """x (..., D) rotated over its first R = 2 * cos.shape[-1] dims; cos/sin (..., R/2)."""
    r = 2 * cos.shape[-1]
    if interleaved:
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
    else:
        x1, x2 = x[..., : r // 2], x[..., r // 2 : r]
    y = x.copy()
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    if interleaved:
        y[..., 0:r:2], y[..., 1:r:2] = y1, y2
    else:
        y[..., : r // 2], y[..., r // 2 : r] = y1, y2
    return y


def cache_attention_reference(q, k, v, k_cache, v_cache, past_len, q_len, cos_table=None,
                              sin_table=None, *, num_heads, kv_heads, scale, window, softcap,
                              rotary_interleaved=False):  # fmt: skip
    """The definition above, one sequence and one head group at a time, in float64."""
    b, t, _ = q.shape
    d, dv = k_cache.shape[3], v_cache.shape[3]
    group = num_heads // kv_heads
    kc, vc = k_cache.copy(), v_cache.copy()
    out = np.zeros((b, t, num_heads, dv), dtype=np.float64)
    qh = q.reshape(b, t, num_heads, d).astype(np.float64)
    kh = k.reshape(b, t, kv_heads, d).astype(np.float64)  # a copy: rotary writes into it
    vh = v.reshape(b, t, kv_heads, dv)
    for i in range(b):
        p, n = int(past_len[i]), int(q_len[i])
        if p < 0 or n < 0 or n > t or p + n > kc.shape[2]:
            raise IRError(f"cache_attention: row {i} writes slots {p}..{p + n} of {kc.shape[2]}")
        if cos_table is not None:
            if p + n > cos_table.shape[0]:
                raise IRError(
                    f"cache_attention: row {i} reaches position {p + n - 1}, beyond the "
                    f"rotary table's {cos_table.shape[0]} rows"
                )
            c, s = (x[p : p + n, None, :].astype(np.float64) for x in (cos_table, sin_table))
            qh[i, :n] = rotate(qh[i, :n], c, s, rotary_interleaved)  # (n, H, D)
            kh[i, :n] = rotate(kh[i, :n], c, s, rotary_interleaved)  # (n, Hkv, D)
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
        "rotary_interleaved": False,
    },  # fmt: skip
    inputs=(7, 9),
    updates={1: 3, 2: 4},
    doc="Causal attention of new tokens over a KV cache they are written into "
    "(outputs 1, 2 update inputs 3, 4); rotary from position-indexed cos/sin tables if given.",
)
