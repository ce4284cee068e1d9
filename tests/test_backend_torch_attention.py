"""The torch backend's attention lowering against the reference kernel (layouts, heads, masks,
causal) and its use of SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_helpers import assert_matches_reference, run_torch

from tgraph.backends.reference import random_inputs
from tgraph.backends.torch_backend import lower
from tgraph.ir import DType, Graph, SymDim

F32, I64, BOOL = DType.float32, DType.int64, DType.bool
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
SIZES = ((2, 5), (3, 8))


# -- attention ---------------------------------------------------------------------------------


def _attention_graph(layout, num_heads, kv_heads, mask, causal, scale=0.25, kv_seq=None):
    """q over (batch, seq); k and v over (batch, kv_seq); mask broadcast to (B, 1, Tq, Tk)."""
    g = Graph("attention")
    kv_seq = kv_seq or SEQ
    if layout == "bhsd":
        q = g.add_input("q", F32, (BATCH, num_heads, SEQ, 8))
        k = g.add_input("k", F32, (BATCH, kv_heads, kv_seq, 8))
        v = g.add_input("v", F32, (BATCH, kv_heads, kv_seq, 6))
    else:
        q = g.add_input("q", F32, (BATCH, SEQ, num_heads * 8))
        k = g.add_input("k", F32, (BATCH, kv_seq, kv_heads * 8))
        v = g.add_input("v", F32, (BATCH, kv_seq, kv_heads * 6))
    m = None if mask is None else g.add_input("mask", mask, (BATCH, 1, SEQ, kv_seq))
    attrs = dict(num_heads=num_heads, kv_heads=kv_heads, scale=scale, causal=causal, layout=layout)
    g.outputs = [g.create_node("attention", [q, k, v, m], attrs).output]
    g.verify()
    return g


def _attention_inputs(graph: Graph, bindings: dict, seed: int) -> list[np.ndarray]:
    arrays = random_inputs(graph, bindings, seed)
    for i, v in enumerate(graph.inputs):
        if v.name == "mask" and v.dtype is BOOL:
            arrays[i][..., 0] = True  # every query sees a key even under the causal mask
    return arrays


@pytest.mark.parametrize("layout", ["bhsd", "bsd"])
@pytest.mark.parametrize(
    "heads,mask,causal",
    [
        ((4, 4), None, False),
        ((4, 2), None, True),
        ((4, 1), BOOL, False),
        ((4, 2), BOOL, True),
        ((2, 2), F32, False),
        ((4, 2), F32, True),
    ],
)
def test_attention(layout, heads, mask, causal):
    graph = _attention_graph(layout, *heads, mask=mask, causal=causal)
    runner = lower(graph)
    for batch, seq in SIZES:
        inputs = _attention_inputs(graph, {"batch": batch, "seq": seq}, seed=batch)
        assert_matches_reference(graph, inputs, runner)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_more_keys_than_queries(causal):
    kv = SymDim.symbol("kv_seq")
    graph = _attention_graph("bsd", 4, 2, mask=BOOL, causal=causal, kv_seq=kv)
    runner = lower(graph)
    for batch, seq in SIZES:
        inputs = _attention_inputs(graph, {"batch": batch, "seq": seq, "kv_seq": seq + 3}, seed=1)
        assert_matches_reference(graph, inputs, runner)


def test_attention_calls_sdpa(monkeypatch):
    graph = _attention_graph("bsd", 4, 2, mask=None, causal=True)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    run_torch(graph, random_inputs(graph, {"batch": 2, "seq": 5}))
    assert len(calls) == 1
    assert calls[0]["is_causal"] and calls[0]["enable_gqa"] and calls[0]["attn_mask"] is None
