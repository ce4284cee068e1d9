"""The ``cache_attention`` op: its NumPy definition against the torch kernel (uneven lengths,
right-padded query rows, GQA, sliding window, softcap), and its shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tgraph.backends.torch_cache_ops import cache_attention
from tgraph.ir import DType, Graph, IRError, SymDim
from tgraph.ir.ops import get_op

B, T, L, H, HKV, D = 3, 3, 10, 4, 2, 8
PAST = np.array([0, 2, 5])
QLEN = np.array([3, 1, 2])  # row 1 and 2 have right-padded query rows


def _data(seed: int = 0):
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, T, H * D)).astype(np.float32)
    k = r.standard_normal((B, T, HKV * D)).astype(np.float32)
    v = r.standard_normal((B, T, HKV * D)).astype(np.float32)
    kc = r.standard_normal((B, HKV, L, D)).astype(np.float32)
    vc = r.standard_normal((B, HKV, L, D)).astype(np.float32)
    return q, k, v, kc, vc


@pytest.mark.parametrize("window, softcap", [(0, 0.0), (2, 0.0), (0, 5.0)])
def test_torch_kernel_matches_the_definition(window, softcap):
    q, k, v, kc, vc = _data()
    attrs = dict(num_heads=H, kv_heads=HKV, scale=D**-0.5, window=window, softcap=softcap)
    want, want_k, want_v = get_op("cache_attention").run([q, k, v, kc, vc, PAST, QLEN], attrs)
    tk, tv = torch.from_numpy(kc.copy()), torch.from_numpy(vc.copy())
    out, got_k, got_v = cache_attention(
        *(torch.from_numpy(x) for x in (q, k, v)), tk, tv,
        torch.from_numpy(PAST), torch.from_numpy(QLEN), **attrs,
    )  # fmt: skip
    assert got_k is tk and got_v is tv  # written in place
    for b in range(B):
        n, end = QLEN[b], PAST[b] + QLEN[b]
        np.testing.assert_allclose(out[b, :n].numpy(), want[b, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got_k[b, :, :end].numpy(), want_k[b, :, :end])
        np.testing.assert_array_equal(got_v[b, :, :end].numpy(), want_v[b, :, :end])
        np.testing.assert_array_equal(want_k[b, :, : PAST[b]], kc[b, :, : PAST[b]])  # past kept


def test_decode_step_matches_the_definition():
    q, k, v, kc, vc = (x[:, :1] if x.ndim == 3 else x for x in _data(1))
    attrs = dict(num_heads=H, kv_heads=HKV, scale=0.3, window=0, softcap=0.0)
    ones = np.ones(B, dtype=np.int64)
    want, _, _ = get_op("cache_attention").run([q, k, v, kc, vc, PAST, ones], attrs)
    out, _, _ = cache_attention(*(torch.from_numpy(x.copy()) for x in (q, k, v, kc, vc)),
                                torch.from_numpy(PAST), torch.from_numpy(ones), **attrs)  # fmt: skip
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def _graph(q_width: int = H * D, lens_dtype: DType = DType.int64) -> tuple[Graph, list]:
    g = Graph()
    batch, seq, cache = (SymDim.symbol(n) for n in ("batch", "seq", "cache"))
    ins = [g.add_input("q", DType.float32, [batch, seq, q_width]),
           g.add_input("k", DType.float32, [batch, seq, HKV * D]),
           g.add_input("v", DType.float32, [batch, seq, HKV * D]),
           g.add_input("kc", DType.float32, [batch, HKV, cache, D]),
           g.add_input("vc", DType.float32, [batch, HKV, cache, D]),
           g.add_input("past", lens_dtype, [batch]),
           g.add_input("qlen", DType.int64, [batch])]  # fmt: skip
    return g, ins


def test_infer_gives_output_and_updated_cache_types():
    g, ins = _graph()
    node = g.create_node("cache_attention", ins, dict(num_heads=H, kv_heads=HKV, scale=0.3))
    out, nk, nv = node.outputs
    assert str(out.type) == "f32[batch,seq,32]"
    assert nk.type == ins[3].type and nv.type == ins[4].type


@pytest.mark.parametrize(
    "q_width, lens_dtype, attrs, message",
    [
        (H * D, DType.int64, dict(num_heads=3, kv_heads=HKV), "not a multiple"),
        (H * D + 1, DType.int64, dict(num_heads=H, kv_heads=HKV), "q/k widths"),
        (H * D, DType.int32, dict(num_heads=H, kv_heads=HKV), "past_len must be int64"),
    ],
)
def test_infer_rejects_bad_shapes(q_width, lens_dtype, attrs, message):
    g, ins = _graph(q_width, lens_dtype)
    with pytest.raises(IRError, match=message):
        g.create_node("cache_attention", ins, dict(scale=0.3, **attrs))
