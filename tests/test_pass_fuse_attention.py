"""fuse-attention: sdpa and written-out attention -> one attention op (causal, GQA, bsd)."""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.ir import DType
from tgraph.passes._mask_forms import KIND_LOWER, KIND_UPPER, Tri, tri_form
from tgraph.passes.manager import optimize

CLEANUP = "simplify,fold-constants,cse,dce,fuse-rotary,fuse-attention,dce"
MIN = torch.finfo(torch.float32).min


def _attentions(graph):
    return [n for n in graph.nodes if n.op == "attention"]


def _one(graph):
    (attn,) = _attentions(graph)
    return attn


def _unchanged(graph, pipeline="fuse-attention"):
    out, records = optimize(graph, pipeline)
    assert out.dump() == graph.dump()
    return records


# -- the written-out form --------------------------------------------------------------------


class Attention(torch.nn.Module):
    """Self-attention written out, with the knobs that real models turn.

    scale: "mul" (scores * c), "div" (scores / sqrt(D)), "q" or "k" (scaled before the matmul).
    mask: None, "padding" (additive (B,1,1,T) from an int mask), "tril" (where(tril, s, -inf)),
      "triu" (masked_fill(triu(.., 1), -inf)), "buffer" (nanoGPT's tril buffer [:T, :T] == 0),
      "additive" (s + triu(full(-inf), 1)), "finfo" (masked_fill(triu, finfo.min)),
      "tril_padding", "bool" (where(pad, s, -inf)), "bool_finfo" (masked_fill(~pad, finfo.min)),
      "tril_1" (tril(.., 1): not causal), "fill_1e4" (masked_fill(triu, -1e4)).
    kv_heads: below 4 repeats k, v heads, by "expand" (Llama's repeat_kv) or "interleave".
    k_pre_t: k comes split straight into (B, H, D, T); clone: p.clone() before p @ v.
    """

    def __init__(
        self, scale="mul", mask=None, kv_heads=4, repeat="expand", k_pre_t=False, clone=False
    ):
        super().__init__()
        self.q = torch.nn.Linear(32, 32)
        self.k = torch.nn.Linear(32, 8 * kv_heads)
        self.v = torch.nn.Linear(32, 8 * kv_heads)
        self.register_buffer("bias", torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))
        self.scale, self.mask, self.kv, self.repeat = scale, mask, kv_heads, repeat
        self.k_pre_t, self.clone = k_pre_t, clone

    def _heads(self, x):  # (B, kv, T, D) -> (B, 4, T, D)
        n = 4 // self.kv
        if n == 1:
            return x
        if self.repeat == "interleave":
            return x.repeat_interleave(n, dim=1)
        b, h, t, d = x.shape
        return x[:, :, None].expand(b, h, n, t, d).reshape(b, h * n, t, d)

    def _masked(self, s, pad):
        t = s.shape[-1]
        m = self.mask
        if m in ("padding", "tril_padding"):
            s = s + (1.0 - pad[:, None, None, :].float()) * MIN
        if m in ("tril", "tril_padding"):
            s = torch.where(torch.tril(torch.ones(t, t, dtype=torch.bool)), s, float("-inf"))
        if m == "triu":
            s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        if m == "buffer":
            s = s.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        if m == "additive":
            s = s + torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        if m == "finfo":
            s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), MIN)
        if m == "bool":
            s = torch.where(pad[:, None, None, :] > 0, s, float("-inf"))
        if m == "bool_finfo":
            s = s.masked_fill(pad[:, None, None, :] == 0, MIN)
        if m == "tril_1":
            s = torch.where(torch.tril(torch.ones(t, t, dtype=torch.bool), 1), s, float("-inf"))
        if m == "fill_1e4":
            s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -1e4)
        return s

    def forward(self, x, pad):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 8).transpose(1, 2)  # (B, 4, T, 8)
        k = self.k(x).view(b, t, self.kv, 8)
        v = self._heads(self.v(x).view(b, t, self.kv, 8).transpose(1, 2))
        if self.scale == "q":
            q = q * 8**-0.5
        if self.scale == "k":
            k = k / math.sqrt(8)
        if self.k_pre_t:  # (B, 4, 8, T): the transpose folded into the head split
            kt = k.permute(0, 2, 3, 1)
        else:
            kt = self._heads(k.transpose(1, 2)).transpose(-2, -1)
        s = q @ kt
        if self.scale == "mul":
            s = s * 8**-0.5
        if self.scale == "div":
            s = s / math.sqrt(8)
        p = torch.softmax(self._masked(s, pad), dim=-1)
        p = p.clone() if self.clone else p  # an identity left between softmax and @ v
        return (p @ v).transpose(1, 2).reshape(b, t, 32)


class Blocks(torch.nn.Module):
    """Several variants side by side on the same inputs: one trace checks them all."""

    def __init__(self, **blocks):
        super().__init__()
        self.blocks = torch.nn.ModuleDict(blocks)

    def forward(self, x, pad):
        outs = []
        for block in self.blocks.values():
            out = block(x, pad)
            outs.extend(out if isinstance(out, tuple) else (out,))
        return tuple(outs)


@functools.cache
def _traced(kind):
    pad = torch.ones(2, 8, dtype=torch.long)
    return trace_module(Blocks(**VARIANTS[kind]()), torch.randn(2, 8, 32), pad)


def _by_block(graph):
    """block name -> its attention node."""
    return {n.meta["module"].split(".")[1]: n for n in _attentions(graph)}


def _rejected(records, rule):
    return {r["module"].split(".")[1]: r["reason"] for r in rejections(records, rule)}


def _check(graph, pipeline="fuse-attention,dce", **kw):
    return check_pass(graph, pipeline, appear=["attention"], int_high=2, **kw)


def test_written_out_attention_fuses_to_bsd():
    out, records = _check(_traced("scales"), disappear=["softmax", "permute"])
    blocks = _by_block(out)
    assert sorted(blocks) == ["clone", "div", "k", "k_pre_t", "mul", "q"]
    for attn in blocks.values():
        assert attn.attrs["layout"] == "bsd" and len(attn.inputs) == 3
        assert math.isclose(attn.attrs["scale"], 8**-0.5, rel_tol=1e-6)
        assert not attn.attrs["causal"]
    assert matches(records, "softmax-attention") == matches(records, "split-merge-heads") == 6
    assert matches(records, "absorb-scale") == 2


# block -> (causal, mask dtype or None)
MASKS = {
    "tril": (True, None),
    "triu": (True, None),
    "buffer": (True, None),
    "additive": (True, None),
    "finfo": (True, None),
    "padding": (False, DType.float32),
    "tril_padding": (True, DType.float32),
    "bool": (False, DType.bool),
    "bool_finfo": (False, DType.float32),  # a finfo.min fill stays additive: exact
    "tril_1": (False, DType.bool),  # tril(.., 1) is not causal: a general mask
}


@pytest.mark.parametrize("pipeline", ["fuse-attention,dce", CLEANUP])
def test_masks_become_the_causal_flag_or_the_mask_input(pipeline):
    out, records = _check(_traced("masks"), pipeline, disappear=["softmax"])
    blocks = _by_block(out)
    assert len(blocks) == len(MASKS)
    for name, (causal, dtype) in MASKS.items():
        attn = blocks[name]
        assert attn.attrs["causal"] == causal, name
        assert (attn.inputs[3].dtype if len(attn.inputs) == 4 else None) == dtype, name
        assert attn.attrs["layout"] == "bsd"
    assert "triu" not in out.op_histogram()


def test_grouped_query_heads_drop_the_repeat():
    out, records = _check(_traced("gqa"), disappear=["softmax", "expand"])
    for attn in _by_block(out).values():
        assert (attn.attrs["num_heads"], attn.attrs["kv_heads"]) == (4, 2)
        assert attn.attrs["layout"] == "bsd" and attn.attrs["causal"]
    assert matches(records, "repeat-kv") == 2


# -- negatives: the pattern must not fire --------------------------------------------------------


class Probs(torch.nn.Module):
    """Attention whose probabilities are also returned (an interior value with another user)."""

    def forward(self, x, pad):
        q = k = v = x.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1)
        return p @ v, p


class Flat(torch.nn.Module):
    """(B, T, D) attention: rank 3, no head dim to fuse over."""

    def __init__(self, sdpa=False):
        super().__init__()
        self.sdpa = sdpa

    def forward(self, x, pad):
        q = k = v = x[..., :8]
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v)
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v


class OverQueries(torch.nn.Module):
    def forward(self, x, pad):
        q = k = v = x.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-2) @ v


NEGATIVES = {  # block -> (rule, words of the reason)
    "fill": ("softmax-attention", "-10000.0 is neither -inf"),
    "probs": ("softmax-attention", "is a graph output"),
    "flat": ("softmax-attention", "want 4"),
    "axis": ("softmax-attention", "not the last"),
    "sdpa_flat": ("sdpa", "want 4"),
}


def test_unprovable_sites_are_rejected_with_a_reason():
    g = _traced("negatives")
    out, records = optimize(g, "fuse-attention")
    assert out.dump() == g.dump()
    for name, (rule, words) in NEGATIVES.items():
        assert words in _rejected(records, rule)[name], name


# -- sdpa ------------------------------------------------------------------------------------


class Sdpa(torch.nn.Module):
    def __init__(self, mask=None, causal=False, kv_heads=4, scale=None):
        super().__init__()
        self.mask, self.causal, self.kv, self.scale = mask, causal, kv_heads, scale

    def forward(self, x, pad):
        b, t, _ = x.shape
        q = x.view(b, t, 4, 8).transpose(1, 2)
        k = v = x[..., : 8 * self.kv].sin().reshape(b, t, self.kv, 8).transpose(1, 2)
        mask = None
        if self.mask == "bool":
            mask = pad[:, None, None, :] > 0
        if self.mask == "float":
            mask = (1.0 - pad[:, None, None, :].float()) * MIN
        if self.mask == "tril":
            mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
        if self.mask in INDEX_MASKS:
            mask = INDEX_MASKS[self.mask](torch.arange(t), pad)
        out = F.scaled_dot_product_attention(
            q, k, v, mask, is_causal=self.causal, scale=self.scale, enable_gqa=self.kv != 4
        )
        return out.transpose(1, 2).reshape(b, t, -1)


def _index_mask(kv, q, op, pad=None):
    """Hugging Face's masking_utils: a mask function on broadcast position indices."""
    mask = op(kv[None, None, None, :], q[None, None, :, None])
    return mask & (pad[:, None, None, :] > 0) if pad is not None else mask


INDEX_MASKS = {
    "kv_le_q": lambda i, pad: _index_mask(i, i + 0, torch.le),  # kv_idx <= q_idx: causal
    "q_gt_kv": lambda i, pad: _index_mask(i, i + 1, torch.lt),  # kv_idx < q_idx + 1: causal
    "causal_padding": lambda i, pad: _index_mask(i, i, torch.le, pad),  # causal & padding
    "padding_expanded": lambda i, pad: _index_mask(i, i, torch.le, pad).expand(-1, 1, -1, -1),
    "kv_lt_q": lambda i, pad: _index_mask(i, i, torch.lt),  # the diagonal masked: not causal
    "window": lambda i, pad: _index_mask(i, i, torch.le) & _index_mask(i, i - 3, torch.gt),
}

SDPA = {  # block -> (kwargs, causal, masked)
    "plain": ({}, False, False),
    "causal": ({"causal": True, "scale": 0.25}, True, False),
    "bool_mask": ({"mask": "bool"}, False, True),
    "additive": ({"mask": "float"}, False, True),
    "tril": ({"mask": "tril"}, True, False),  # a proven causal mask becomes the flag
    "gqa": ({"kv_heads": 2, "causal": True}, True, False),
    "kv_le_q": ({"mask": "kv_le_q"}, True, False),
    "q_gt_kv": ({"mask": "q_gt_kv"}, True, False),
    "causal_padding": ({"mask": "causal_padding"}, True, True),
    "padding_expanded": ({"mask": "padding_expanded"}, True, True),
    "kv_lt_q": ({"mask": "kv_lt_q"}, False, True),  # negative: strictly below the diagonal
    "window": ({"mask": "window"}, True, True),  # causal & window: the window stays a mask
}


def test_sdpa():
    out, records = _check(_traced("sdpa"), disappear=["sdpa", "permute"])
    blocks = _by_block(out)
    for name, (kw, causal, masked) in SDPA.items():
        attn = blocks[name]
        assert attn.attrs["causal"] == causal and (len(attn.inputs) == 4) == masked, name
        assert attn.attrs["layout"] == "bsd"
        assert attn.attrs["kv_heads"] == kw.get("kv_heads", 4)
        assert math.isclose(attn.attrs["scale"], kw.get("scale", 8**-0.5))
    assert matches(records, "sdpa") == len(SDPA)


# -- negatives of the rules that rewrite a fused attention ---------------------------------------


class Heads(torch.nn.Module):
    """sdpa on split heads; ``leak`` also returns one interior tensor of a rewrite."""

    def __init__(self, leak=None, tile=False):
        super().__init__()
        self.leak, self.tile = leak, tile

    def forward(self, x, pad):
        b, t, _ = x.shape
        q = x.view(b, t, 4, 8).transpose(1, 2)
        k = x[..., :16].reshape(b, t, 2, 8).transpose(1, 2)
        v = x[..., 16:].reshape(b, t, 2, 8).transpose(1, 2)
        if self.tile:  # heads in tile order (h = r * 2 + kv): not grouped-query
            k, v = (y[:, None].expand(b, 2, 2, t, 8).reshape(b, 4, t, 8) for y in (k, v))
        else:
            k, v = (y.repeat_interleave(2, dim=1) for y in (k, v))
        qs = q * 0.5 if self.leak == "scale" else q
        qi = qs.clone() if self.leak == "identity" else qs
        o = F.scaled_dot_product_attention(qi, k, v).transpose(1, 2)
        leaked = {"scale": qs, "identity": qi}.get(self.leak, o)
        return o.reshape(b, t, 32), leaked


HEADS = {  # block -> (rule, words of the reason, layout, kv_heads)
    "scale": ("absorb-scale", "is a graph output", "bhsd", 2),
    "identity": ("skip-identity", "is a graph output", "bhsd", 2),
    "merge": ("split-merge-heads", "is a graph output", "bhsd", 2),
    "tile": ("repeat-kv", "unsqueeze at axis 2", "bhsd", 4),
}


def test_rewrites_of_the_fused_op_keep_what_they_cannot_prove():
    out, records = _check(_traced("heads"), disappear=["sdpa"])
    blocks = _by_block(out)
    for name, (rule, words, layout, kv) in HEADS.items():
        assert words in _rejected(records, rule)[name], name
        assert (blocks[name].attrs["layout"], blocks[name].attrs["kv_heads"]) == (layout, kv)


VARIANTS = {
    "scales": lambda: (
        {s: Attention(scale=s) for s in ("mul", "div", "q", "k")}
        | {"k_pre_t": Attention(k_pre_t=True), "clone": Attention(clone=True)}
    ),
    "masks": lambda: {name: Attention(mask=name) for name in MASKS},
    "gqa": lambda: {
        r: Attention(kv_heads=2, repeat=r, mask="tril") for r in ("expand", "interleave")
    },
    "negatives": lambda: {
        "fill": Attention(mask="fill_1e4"),
        "probs": Probs(),
        "flat": Flat(),
        "axis": OverQueries(),
        "sdpa_flat": Flat(sdpa=True),
    },
    "sdpa": lambda: {name: Sdpa(**kw) for name, (kw, _, _) in SDPA.items()},
    "heads": lambda: {
        "scale": Heads("scale"),
        "identity": Heads("identity"),
        "merge": Heads(),
        "tile": Heads(tile=True),
    },
}


# -- the causal proof on constants -------------------------------------------------------------


def _const_graph(array):
    from tgraph.ir import Graph

    g = Graph()
    return g.add_const(array, DType.from_numpy(array.dtype))


@pytest.mark.parametrize(
    "array, want",
    [
        (np.tril(np.ones((5, 7), bool)), Tri(KIND_LOWER, 0, 1.0)),
        (np.triu(np.full((6, 6), -np.inf, np.float32), 1), Tri(KIND_UPPER, 1, -np.inf)),
        (np.tril(np.ones((1, 1, 4, 4)), -1), Tri(KIND_LOWER, -1, 1.0)),
    ],
)
def test_triangular_constants_are_recognized(array, want):
    assert tri_form(_const_graph(array)) == want


def test_a_near_triangular_constant_is_not():
    a = np.tril(np.ones((6, 6), bool))
    a[4, 1] = False
    assert tri_form(_const_graph(a)) is None
