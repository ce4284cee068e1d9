"""torch kernel of the IR op ``cache_attention`` (definition: tgraph/ir/ops/cache.py).

The caches are written IN PLACE (the op declares outputs 1, 2 as updates of inputs 3, 4)
and returned as the outputs, so a generation loop keeps one buffer per layer for the whole
run. Attention reads only the valid slice ``[:, :, :max(past_len + q_len)]`` of each cache,
through ``F.scaled_dot_product_attention``; nothing is concatenated and nothing allocated
grows with the cache's capacity. The one host sync is reading that slice length.
Rows t >= q_len[b] are written too (the op leaves slots past the valid ones unspecified),
which is why callers keep past_len[b] + seq <= cache_len. With the rotary tables, q and k
are rotated first by the table rows of their positions past_len[b] + t (padding rows read a
clamped row; their results are unspecified anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _visible(past_len: Tensor, t: int, n: int, window: int) -> Tensor:
    """(B, 1, T, n) bool: query row t of sequence b sees slot j (causal, sliding window)."""
    pos = past_len[:, None] + torch.arange(t, device=past_len.device)  # (B, T)
    slot = torch.arange(n, device=past_len.device)
    mask = slot[None, None, :] <= pos[:, :, None]
    if window > 0:
        mask &= slot[None, None, :] > pos[:, :, None] - window
    return mask[:, None]


def rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """x (B, T, heads, D) rotated over its first R dims by cos/sin (B, T, 1, R/2)."""
    r = 2 * cos.shape[-1]
    if interleaved:
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
        y = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = x[..., : r // 2], x[..., r // 2 : r]
        y = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return y if r == x.shape[-1] else torch.cat((y, x[..., r:]), dim=-1)


def _rotate_qk(q, k, past_len, cos_table, sin_table, num_heads, kv_heads, interleaved):
    """q (B, T, H*D) and k (B, T, Hkv*D) rotated at positions past_len + t."""
    b, t, _ = q.shape
    pos = past_len[:, None] + torch.arange(t, device=q.device)  # (B, T)
    pos = pos.clamp(max=cos_table.shape[0] - 1)
    cos, sin = cos_table[pos][:, :, None], sin_table[pos][:, :, None]  # (B, T, 1, R/2)
    q = rotate(q.view(b, t, num_heads, -1), cos, sin, interleaved).reshape(b, t, -1)
    k = rotate(k.view(b, t, kv_heads, -1), cos, sin, interleaved).reshape(b, t, -1)
    return q, k


def cache_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor,
                    past_len: Tensor, q_len: Tensor, cos_table: Tensor | None = None,
                    sin_table: Tensor | None = None, *, num_heads: int, kv_heads: int,
                    scale: float, window: int = 0, softcap: float = 0.0,
                    rotary_interleaved: bool = False):  # fmt: skip
    b, t, _ = q.shape
    d, dv = k_cache.shape[3], v_cache.shape[3]
    if cos_table is not None:
        q, k = _rotate_qk(q, k, past_len, cos_table, sin_table, num_heads, kv_heads,
                          rotary_interleaved)  # fmt: skip
    rows = torch.arange(b, device=q.device)
    if t == 1:  # decode: one slot per sequence
        k_cache[rows, :, past_len] = k.view(b, kv_heads, d)
        v_cache[rows, :, past_len] = v.view(b, kv_heads, dv)
    else:
        slots = past_len[:, None] + torch.arange(t, device=q.device)  # (B, T)
        k_cache[rows[:, None], :, slots] = k.view(b, t, kv_heads, d)
        v_cache[rows[:, None], :, slots] = v.view(b, t, kv_heads, dv)
    ends = past_len + q_len
    n = int(ends.max())
    keys, values = k_cache[:, :, :n], v_cache[:, :, :n]
    uniform = t == 1 and window == 0 and (b == 1 or bool((ends == n).all()))
    mask = None if uniform else _visible(past_len, t, n, window)
    if softcap > 0:
        qh = q.view(b, t, num_heads, d).transpose(1, 2)  # (B, H, T, D)
        out = _softcapped(qh, keys, values, mask, num_heads // kv_heads, scale, softcap)
    elif t == 1:
        # Decode: the query heads sharing a KV head become that head's rows (B, Hkv, G, D),
        # so K/V are read as they are, never repeated per query head; the (B, 1, 1, n) mask
        # broadcasts over them.
        qh = q.view(b, kv_heads, num_heads // kv_heads, d)
        out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask, scale=scale)
        return out.reshape(b, 1, num_heads * dv), k_cache, v_cache
    else:
        qh = q.view(b, t, num_heads, d).transpose(1, 2)  # (B, H, T, D)
        out = F.scaled_dot_product_attention(
            qh, keys, values, attn_mask=mask, scale=scale, enable_gqa=kv_heads != num_heads
        )
    return out.transpose(1, 2).reshape(b, t, num_heads * dv), k_cache, v_cache


def _softcapped(q, keys, values, mask, group, scale, softcap):
    """Attention with tanh-capped scores (SDPA has no softcap)."""
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    scores = softcap * torch.tanh(q @ keys.transpose(-1, -2) * scale / softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ values
