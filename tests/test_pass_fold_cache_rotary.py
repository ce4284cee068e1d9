"""fold-cache-rotary: rotary ops on cache_attention's q and k become its position tables.

Hand-built step graphs (the form capture.py traces: position = past_len + arange(seq), cos/sin
computed from it) check the rewrite against the reference interpreter and each reason a site
is left alone; Hugging Face models with head sizes ORT's GroupQueryAttention rotates itself
(16, 32; partial rotary on Phi and GPT-NeoX) check generation on ort and torch end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generation import NEW, eager_logits, prompt

import tgraph
from tgraph.backends.onnx_model import to_onnx
from tgraph.backends.reference import run_graph
from tgraph.ir import DType, Graph, SymDim
from tgraph.passes.manager import optimize

H, HKV, D, R, CAP = 4, 2, 8, 8, 12
FOLD = "fold-cache-rotary{max_positions=32}"
PIPELINE = f"{FOLD},dce,simplify,dce"  # dce first: the dead rotary still reads the permutes


def _position(g: Graph, past_len, seq):
    steps = g.create_node("arange", [], dict(start=0, end=seq, step=1, dtype=DType.int64)).output
    a = g.create_node("unsqueeze", [past_len], dict(axes=(1,))).output
    b = g.create_node("unsqueeze", [steps], dict(axes=(0,))).output
    return g.create_node("add", [a, b]).output  # (B, T)


def _step_graph(source: str = "position", rotary_dim: int = R, heads_first: bool = True,
                interleaved: bool = False) -> Graph:  # fmt: skip
    """One layer: q, k rotated like HF Llama, on (B, H, T, D) heads with cos/sin (B, 1, T, R)
    (or on (B, T, H, D) with (B, T, 1, R)), cos/sin computed from ``source``; interleaved:
    like GPT-J, each angle repeated twice in a row by an expand to symbolic (B, T, R/2, 2)."""
    g = Graph("step")
    batch, seq, cap = (SymDim.symbol(n) for n in ("batch", "seq", "cache_len"))
    q = g.add_input("q", DType.float32, [batch, seq, H * D])
    k = g.add_input("k", DType.float32, [batch, seq, HKV * D])
    v = g.add_input("v", DType.float32, [batch, seq, HKV * D])
    caches = [g.add_input(n, DType.float32, [batch, HKV, cap, D]) for n in ("kc", "vc")]
    past_len = g.add_input("past_len", DType.int64, [batch])
    q_len = g.add_input("q_len", DType.int64, [batch])
    if source == "input":
        angles = g.add_input("angles", DType.float32, [batch, seq, rotary_dim // 2])
    else:
        pos = _position(g, past_len, seq)
        if source == "steps-only":  # the positions of a model that ignores past_len
            pos = pos.producer.inputs[1]
        pos = g.create_node("unsqueeze", [pos], dict(axes=(2,))).output
        pos = g.create_node("cast", [pos], dict(dtype=DType.float32)).output
        inv_freq = g.add_const(0.5 ** np.arange(rotary_dim // 2), DType.float32, "inv_freq")
        angles = g.create_node("mul", [pos, inv_freq]).output
    if interleaved:
        pairs = g.create_node("unsqueeze", [angles], dict(axes=(3,))).output
        half = (batch, seq, rotary_dim // 2)
        pairs = g.create_node("expand", [pairs], dict(shape=(*half, 2))).output
        emb = g.create_node("reshape", [pairs], dict(shape=(batch, seq, rotary_dim))).output
    else:
        emb = g.create_node("concat", [angles, angles], dict(axis=-1)).output
    cos, sin = (g.create_node(f, [emb]).output for f in ("cos", "sin"))
    axes = (1,) if heads_first else (2,)
    cos, sin = (g.create_node("unsqueeze", [t], dict(axes=axes)).output for t in (cos, sin))
    flat = []
    for x, heads in ((q, H), (k, HKV)):
        x = g.create_node("reshape", [x], dict(shape=(batch, seq, heads, D))).output
        if heads_first:
            x = g.create_node("permute", [x], dict(perm=(0, 2, 1, 3))).output
        if rotary_dim < D:
            part, rest = (g.create_node("slice", [x], dict(axis=3, start=a, end=b, step=1)).output
                          for a, b in ((0, rotary_dim), (rotary_dim, D)))  # fmt: skip
            rot = g.create_node("rotary", [part, cos, sin], dict(interleaved=interleaved)).output
            x = g.create_node("concat", [rot, rest], dict(axis=3)).output
        else:
            x = g.create_node("rotary", [x, cos, sin], dict(interleaved=interleaved)).output
        if heads_first:
            x = g.create_node("permute", [x], dict(perm=(0, 2, 1, 3))).output
        flat.append(g.create_node("reshape", [x], dict(shape=(batch, seq, heads * D))).output)
    node = g.create_node("cache_attention", [*flat, v, *caches, past_len, q_len],
                         dict(num_heads=H, kv_heads=HKV, scale=D**-0.5))  # fmt: skip
    g.outputs = list(node.outputs)
    return g


def _inputs(seed: int, past: list[int], n: list[int], t: int) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    b = len(past)
    arrays = [r.standard_normal((b, t, w)).astype(np.float32) for w in (H * D, HKV * D, HKV * D)]
    arrays += [r.standard_normal((b, HKV, CAP, D)).astype(np.float32) for _ in range(2)]
    return [*arrays, np.array(past), np.array(n)]


@pytest.mark.parametrize(
    "rotary_dim, heads_first, interleaved",
    [(R, True, False), (R // 2, True, False), (R // 2, False, False), (R, True, True),
     (R // 2, False, True)],
)  # fmt: skip
def test_rotary_folds_into_tables_with_the_same_outputs(rotary_dim, heads_first, interleaved):
    g = _step_graph(rotary_dim=rotary_dim, heads_first=heads_first, interleaved=interleaved)
    after, records = optimize(g, PIPELINE)
    assert records[0].changed and records[0].stats == {"folded": 1, "skipped": []}
    hist = after.op_histogram()
    assert "rotary" not in hist and "cos" not in hist and hist["cache_attention"] == 1
    node = next(n for n in after.nodes if n.op == "cache_attention")
    assert node.attrs["rotary_interleaved"] == interleaved
    assert node.inputs[0] is after.inputs[0] and node.inputs[1] is after.inputs[1]  # no shuffles
    assert node.inputs[7].shape == (32, rotary_dim // 2)
    for seed, past, n, t in ((0, [0, 2], [4, 3], 4), (1, [5, 0, 9], [1, 1, 1], 1)):
        inputs = _inputs(seed, past, n, t)
        want, got = run_graph(g, inputs), run_graph(after, inputs)
        for b in range(len(past)):  # the real rows and slots (the rest is unspecified)
            end = past[b] + n[b]
            np.testing.assert_allclose(got[0][b, : n[b]], want[0][b, : n[b]], atol=1e-5)
            np.testing.assert_allclose(got[1][b, :, :end], want[1][b, :, :end], atol=1e-5)
    again, records = optimize(after, PIPELINE)
    assert not records[0].changed and again.dump() == after.dump()


@pytest.mark.parametrize(
    "source, pipeline, reason",
    [
        ("input", FOLD, "depends on graph input %angles"),
        ("steps-only", FOLD, "does not depend on the position past_len + arange(seq)"),
        ("position", "fold-cache-rotary", "no position limit"),
    ],
)
def test_a_site_that_cannot_fold_is_left_with_its_reason(source, pipeline, reason):
    g = _step_graph(source)
    after, records = optimize(g, pipeline)
    assert not records[0].changed and after.dump() == g.dump()
    [skip] = records[0].stats["skipped"]
    assert skip["node"] == "cache_attention.0" and reason in skip["reason"]


def test_a_table_that_is_not_the_rotary_form_is_left_with_its_reason():
    """An interleaved rotary on cos/sin of the rotate-half layout (cat(f, f)) is not the
    interleaved form (each frequency twice in a row), so its tables cannot be halved."""
    g = _step_graph()
    for n in g.nodes:
        if n.op == "rotary":
            n.attrs = {**n.attrs, "interleaved": True}
    after, records = optimize(g, FOLD)
    assert not records[0].changed
    [skip] = records[0].stats["skipped"]
    assert "the table's pairs differ" in skip["reason"]


# -- end to end: Hugging Face models, GroupQueryAttention rotating q and k itself -------------


def _model(arch: str) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    common = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, intermediate_size=64,
                  max_position_embeddings=64)  # fmt: skip
    gqa = dict(num_attention_heads=4, num_key_value_heads=2)  # head size 16, rotary 16
    two = dict(num_attention_heads=2)  # head size 32, rotary 16 of 32
    build = {
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**common, **gqa)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**common, **gqa, sliding_window=8)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**common, **gqa)),
        "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**common, **two, partial_rotary_factor=0.5)),
        "gpt-neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**common, **two, rotary_pct=0.5)),
        "cohere": lambda: T.CohereForCausalLM(T.CohereConfig(**common, **gqa)),  # interleaved
    }[arch]
    return build().eval()


@pytest.mark.parametrize(
    "arch, backend",
    [("llama", "ort"), ("mistral", "ort"), ("qwen2", "ort"), ("phi", "ort"), ("gpt-neox", "ort"),
     ("cohere", "ort"), ("phi", "torch"), ("cohere", "torch")],
)  # fmt: skip
def test_generation_with_rotary_inside_cache_attention_matches_eager(arch, backend):
    lm = _model(arch)
    gen = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend=backend)
    graph = gen.step.graph
    attention = [n for n in graph.nodes if n.op == "cache_attention"]
    assert "rotary" not in graph.op_histogram() and len(attention) == 2
    assert all(len(n.inputs) == 9 and n.inputs[7].shape == (64, 8) for n in attention)
    if backend == "ort":
        gqa = [n for n in to_onnx(graph).graph.node if n.op_type == "GroupQueryAttention"]
        attrs = [{a.name: a.i for a in n.attribute} for n in gqa]
        assert [a["do_rotary"] for a in attrs] == [1, 1]
        assert [a["rotary_interleaved"] for a in attrs] == [int(arch == "cohere")] * 2
    ids, mask = prompt()
    want = lm.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                       pad_token_id=0)  # fmt: skip
    got = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0)
    assert torch.equal(got, want)
    tokens = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    got = gen.score(ids, tokens, attention_mask=mask)
    torch.testing.assert_close(got, eager_logits(lm, ids, mask, tokens), rtol=1e-4, atol=1e-4)
