"""Op registry checks of indexing, data movement and the remaining shape ops (see test_ops.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from op_helpers import (
    BATCH,
    F32,
    I64,
    SEQ,
    assert_close,
    randn,
    rng,
    run1,
    run_op,
    t,
)  # fmt: skip

from tgraph.backends.reference import ReferenceRunError, run_graph
from tgraph.ir import DType, Graph, IRError, evaluate

# -- indexing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape,idx_shape,axis,idx_dtype",
    [
        ((10, 4), (2, 3), 0, np.int64),
        ((3, 5, 2), (4,), 1, np.int64),
        ((3, 5, 2), (2, 2), 1, np.int32),
        ((3, 5, 6), (4,), -1, np.int64),
    ],
    ids=str,
)
def test_gather(x_shape, idx_shape, axis, idx_dtype):
    x = randn(*x_shape, seed=1)
    idx = rng(2).integers(0, x_shape[axis], idx_shape).astype(idx_dtype)
    out = run1("gather", [x, idx], {"axis": axis})
    dim = axis % len(x_shape)
    expected = t(x)[(slice(None),) * dim + (t(idx).long(),)]
    assert_close(out, expected)


def test_gather_is_an_embedding_lookup():
    table = randn(11, 6, seed=3)
    ids = rng(4).integers(0, 11, (2, 5))
    assert_close(run1("gather", [table, ids], {"axis": 0}), F.embedding(t(ids), t(table)))


def test_gather_wants_an_integer_index():
    g = Graph()
    x = g.add_input("x", F32, [4, 4])
    with pytest.raises(IRError, match="gather: index dtype is f32, want i64 or i32"):
        g.create_node("gather", [x, x])


@pytest.mark.parametrize(
    "idx_shapes,axis", [([(2, 3), (3,)], 0), ([(4,)], 1), ([(2, 1), (1, 3)], 1)], ids=str
)
def test_index(idx_shapes, axis):
    x = randn(4, 5, 6, seed=1)
    r = rng(2)
    indices = [
        r.integers(0, x.shape[axis + i], shape).astype(np.int64)
        for i, shape in enumerate(idx_shapes)
    ]
    out = run1("index", [x, *indices], {"axis": axis})
    expected = t(x)[(slice(None),) * axis + tuple(t(i) for i in indices)]
    assert_close(out, expected)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = randn(3, 4, 5, seed=1)
    idx_shape = list(x.shape)
    idx_shape[axis] = 6  # longer than x along axis: indices repeat
    idx = rng(2).integers(0, x.shape[axis], idx_shape)
    out = run1("gather_elements", [x, idx], {"axis": axis})
    assert_close(out, torch.gather(t(x), axis, t(idx)))


@pytest.mark.parametrize("axis", [0, 1])
def test_gather_elements_with_a_smaller_index(axis):
    # torch.gather allows index.size(d) <= x.size(d) for every d != axis.
    x = randn(3, 4, 5, seed=1)
    idx = rng(2).integers(0, x.shape[axis], (2, 3, 4))
    out = run1("gather_elements", [x, idx], {"axis": axis})
    assert_close(out, torch.gather(t(x), axis, t(idx)))


# -- data movement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axis,start,end,step", [(1, 1, 6, 2), (-1, 0, 2, 1), (0, 1, 4, 3), (1, 0, 7, 1)], ids=str
)
def test_slice(axis, start, end, step):
    x = randn(4, 7, 3, seed=1)
    out = run1("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})
    index = [slice(None)] * 3
    index[axis] = slice(start, end, step)
    assert_close(out, t(x)[tuple(index)])


@pytest.mark.parametrize("axis", [1, -1])
def test_concat(axis):
    parts = [randn(2, 3, 4, seed=i) for i in range(3)]
    if axis == 1:
        parts = [randn(2, n, 4, seed=n) for n in (2, 3, 1)]
    out = run1("concat", parts, {"axis": axis})
    assert_close(out, torch.cat([t(p) for p in parts], dim=axis))
    assert_close(run1("concat", parts[:1], {"axis": axis}), t(parts[0]))


def test_split():
    x = randn(3, 7, 2, seed=1)
    outs = run_op("split", [x], {"axis": 1, "sizes": (2, 3, 2)})
    expected = torch.split(t(x), [2, 3, 2], dim=1)
    assert len(outs) == 3
    for out, want in zip(outs, expected):
        assert_close(out, want)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (24,), (2, 1, 12), (1, 2, 3, 4)], ids=str)
def test_reshape(shape):
    x = randn(2, 3, 4, seed=1)
    assert_close(run1("reshape", [x], {"shape": shape}), t(x).reshape(shape))


def test_reshape_inference_errors():
    g = Graph()
    x = g.add_input("x", F32, [2, 3, 4])
    with pytest.raises(IRError, match="resolve -1 first"):
        g.create_node("reshape", [x], {"shape": (-1, 4)})
    with pytest.raises(IRError, match=r"cannot reshape .* \(24 elements\) to \(5, 5\) \(25\)"):
        g.create_node("reshape", [x], {"shape": (5, 5)})


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (3, 2, 1, 0), (0, 1, 2, 3)], ids=str)
def test_permute(perm):
    x = randn(2, 3, 4, 5, seed=1)
    assert_close(run1("permute", [x], {"perm": perm}), t(x).permute(perm))


@pytest.mark.parametrize(
    "x_shape,shape", [((3, 1), (2, 3, 4)), ((1,), (5,)), ((2, 1, 3), (2, 4, 3))]
)
def test_expand(x_shape, shape):
    x = randn(*x_shape, seed=1)
    assert_close(run1("expand", [x], {"shape": shape}), t(x).expand(shape))


def test_expand_rejects_a_non_unit_dim():
    g = Graph()
    x = g.add_input("x", F32, [3, 2])
    with pytest.raises(IRError, match="expand: cannot broadcast dims 2 and 4"):
        g.create_node("expand", [x], {"shape": (3, 4)})


@pytest.mark.parametrize("axes", [(0, 2), (-2,), (0,)], ids=str)
def test_squeeze(axes):
    x = randn(1, 3, 1, 4, seed=1)
    expected = t(x)
    for a in sorted((a % 4 for a in axes), reverse=True):
        expected = expected.squeeze(a)
    assert_close(run1("squeeze", [x], {"axes": axes}), expected)
    with pytest.raises(IRError, match="squeeze: dim 1 has size 3, not 1"):
        run1("squeeze", [x], {"axes": (1,)})


@pytest.mark.parametrize("axes", [(0,), (0, 3), (-1,), (1, -1)], ids=str)
def test_unsqueeze(axes):
    x = randn(3, 4, seed=1)
    rank = x.ndim + len(axes)
    expected = t(x)
    for a in sorted(a % rank for a in axes):
        expected = expected.unsqueeze(a)
    assert_close(run1("unsqueeze", [x], {"axes": axes}), expected)


@pytest.mark.parametrize("op", ["tril", "triu"])
@pytest.mark.parametrize("diagonal", [-1, 0, 2])
def test_tril_triu(op, diagonal):
    x = randn(2, 4, 5, seed=1)
    fn = torch.tril if op == "tril" else torch.triu
    assert_close(run1(op, [x], {"diagonal": diagonal}), fn(t(x), diagonal))


@pytest.mark.parametrize(
    "start,end,step,dtype",
    [
        (0, 7, 1, I64),
        (2, 11, 3, I64),
        (3, 4, 2, DType.int32),
        (0, 5, 1, F32),
        (0.5, 3.0, 0.25, F32),
    ],
    ids=str,
)
def test_arange(start, end, step, dtype):
    out = run1("arange", [], {"start": start, "end": end, "step": step, "dtype": dtype})
    expected = torch.arange(start, end, step, dtype=getattr(torch, dtype.name))
    assert_close(out, expected)


@pytest.mark.parametrize(
    "shape,value,dtype",
    [((2, 3), 1.5, F32), ((4,), 7, I64), ((2, 2), True, DType.bool), ((), -2.25, F32)],
)
def test_full(shape, value, dtype):
    out = run1("full", [], {"shape": shape, "value": value, "dtype": dtype})
    assert_close(out, torch.full(shape, value, dtype=getattr(torch, dtype.name)))


@pytest.mark.parametrize(
    "pads,value", [((1, 2, 0, 0, 3, 1), 0.5), ((0, 0, 2, 0, 0, 1), 0.0)], ids=str
)
def test_pad(pads, value):
    x = randn(2, 3, 4, seed=1)
    out = run1("pad", [x], {"pads": pads, "value": value})
    # IR pads are (begin, end) per dim from the first; F.pad lists them from the last dim.
    torch_pads = [p for i in reversed(range(3)) for p in (pads[2 * i], pads[2 * i + 1])]
    assert_close(out, F.pad(t(x), torch_pads, value=value))
    with pytest.raises(IRError, match="pad: want 6 pad amounts"):
        run1("pad", [x], {"pads": (1, 1)})


# -- conv2d and attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stride,padding,bias",
    [((1, 1), (0, 0), True), ((2, 1), (1, 0), True), ((2, 2), (1, 2), False)],
    ids=str,
)
def test_conv2d(stride, padding, bias):
    x, w = randn(2, 3, 7, 6, seed=1), randn(4, 3, 3, 2, seed=2)
    b = randn(4, seed=3) if bias else None
    out = run1("conv2d", [x, w, b] if bias else [x, w], {"stride": stride, "padding": padding})
    expected = F.conv2d(t(x), t(w), None if b is None else t(b), stride=stride, padding=padding)
    assert_close(out, expected)


def _bool_mask(tq: int, tk: int, seed: int) -> np.ndarray:
    mask = rng(seed).random((tq, tk)) < 0.6
    mask[:, 0] = True  # every query keeps at least one key
    return mask


SDPA_CASES = {
    "plain": dict(q=(2, 4, 5, 8), kv=(2, 4, 6, 8)),
    "bool-mask": dict(q=(2, 4, 5, 8), kv=(2, 4, 6, 8), mask="bool"),
    "float-mask": dict(q=(2, 4, 5, 8), kv=(2, 4, 6, 8), mask="float"),
    "causal": dict(q=(2, 4, 6, 8), kv=(2, 4, 6, 8), causal=True),
    "scale": dict(q=(2, 3, 5, 8), kv=(2, 3, 5, 8), scale=0.3),
    "gqa": dict(q=(2, 4, 5, 8), kv=(2, 2, 5, 8), gqa=True),
    "gqa-causal": dict(q=(1, 6, 5, 4), kv=(1, 2, 5, 4), gqa=True, causal=True),
    "3d": dict(q=(3, 5, 8), kv=(3, 7, 8)),
}


@pytest.mark.parametrize("case", sorted(SDPA_CASES))
def test_sdpa(case):
    spec = SDPA_CASES[case]
    q, k, v = randn(*spec["q"], seed=1), randn(*spec["kv"], seed=2), randn(*spec["kv"], seed=3)
    tq, tk = spec["q"][-2], spec["kv"][-2]
    mask = None
    if spec.get("mask") == "bool":
        mask = _bool_mask(tq, tk, seed=4)
    elif spec.get("mask") == "float":
        mask = randn(tq, tk, seed=4)
    attrs = {
        "causal": spec.get("causal", False),
        "scale": spec.get("scale"),
        "gqa": spec.get("gqa", False),
    }
    out = run1("sdpa", [q, k, v] if mask is None else [q, k, v, mask], attrs)
    expected = F.scaled_dot_product_attention(
        t(q),
        t(k),
        t(v),
        attn_mask=None if mask is None else t(mask),
        is_causal=attrs["causal"],
        scale=attrs["scale"],
        enable_gqa=attrs["gqa"],
    )
    assert_close(out, expected)


# -- NumPy scalars from kernels ------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["exp", "neg", "relu", "sigmoid", "gelu"])
def test_unary_op_on_a_0d_tensor(op):
    x = np.array(0.75, dtype=np.float32)
    out = run1(op, [x])
    assert out.shape == ()


def test_gather_with_a_0d_index():
    x = randn(5, seed=1)
    out = run1("gather", [x, np.array(3)], {"axis": 0})
    assert out.shape == () and out == x[3]


def test_0d_results_that_already_work():
    x = np.array(0.75, dtype=np.float32)
    assert_close(run1("add", [x, np.array(1.5, dtype=np.float32)]), torch.tensor(2.25))
    assert_close(run1("reduce_sum", [randn(3, seed=1)]), torch.sum(t(randn(3, seed=1))))
    assert run1("cast", [x], {"dtype": DType.float64}).shape == ()


# -- symbolic dims bound at run time ---------------------------------------------------------------------


def build_symbolic_graph(seed: int = 0) -> Graph:
    """A graph over x: f32[batch,seq,8] whose attributes mention the symbols."""
    g = Graph("sym")
    x = g.add_input("x", F32, [BATCH, SEQ, 8])
    w = g.add_initializer("w", randn(16, 8, seed=seed))
    b = g.add_initializer("b", randn(16, seed=seed + 1))
    h = g.create_node("linear", [x, w, b]).output
    heads = g.create_node("reshape", [h], {"shape": (BATCH, SEQ, 4, 4)}).output
    heads = g.create_node("permute", [heads], {"perm": (0, 2, 1, 3)}).output
    probs = g.create_node("softmax", [heads], {"axis": -1}).output
    tail = g.create_node("slice", [x], {"axis": 1, "start": 1, "end": SEQ}).output
    pos = g.create_node("arange", [], {"end": SEQ, "dtype": I64}).output
    pos = g.create_node("cast", [pos], {"dtype": F32}).output
    pos = g.create_node("unsqueeze", [pos], {"axes": (-1,)}).output
    shifted = g.create_node("add", [x, pos]).output
    flat = g.create_node("reshape", [shifted], {"shape": (BATCH, SEQ * 8)}).output
    both = g.create_node("concat", [x, x], {"axis": 1}).output
    g.outputs = [probs, tail, flat, both]
    g.verify()
    return g


def test_symbolic_graph_types():
    g = build_symbolic_graph()
    assert [str(v.type) for v in g.outputs] == [
        "f32[batch,4,seq,4]",
        "f32[batch,seq-1,8]",
        "f32[batch,8*seq]",
        "f32[batch,2*seq,8]",
    ]


@pytest.mark.parametrize("batch,seq", [(2, 3), (3, 5), (1, 1)])
def test_symbolic_graph_runs_at_several_sizes(batch, seq):
    g = build_symbolic_graph()
    x = randn(batch, seq, 8, seed=batch * 10 + seq)
    outs = run_graph(g, [x])
    env = {"batch": batch, "seq": seq}
    for v, out in zip(g.outputs, outs):
        assert out.shape == tuple(evaluate(d, env) for d in v.shape)
    tx = t(x)
    w, b = t(g.initializers["w"].const), t(g.initializers["b"].const)
    heads = F.linear(tx, w, b).reshape(batch, seq, 4, 4).permute(0, 2, 1, 3)
    assert_close(outs[0], torch.softmax(heads, dim=-1))
    assert_close(outs[1], tx[:, 1:seq])
    assert_close(outs[2], (tx + torch.arange(seq, dtype=torch.float32)[:, None]).reshape(batch, -1))
    assert_close(outs[3], torch.cat([tx, tx], dim=1))


def test_run_graph_checks_inputs():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, SEQ])
    y = g.add_input("y", F32, [SEQ, 4])
    g.outputs = [g.create_node("matmul", [x, y]).output]
    with pytest.raises(ReferenceRunError, match="input y: dim 0 is 5, but seq is 3 elsewhere"):
        run_graph(g, [randn(2, 3), randn(5, 4)])
    with pytest.raises(ReferenceRunError, match="input y: dim 1 is 6, expected shape"):
        run_graph(g, [randn(2, 3), randn(3, 6)])
    with pytest.raises(ReferenceRunError, match="input x: rank 3"):
        run_graph(g, [randn(2, 3, 1), randn(3, 4)])
    with pytest.raises(ReferenceRunError, match="input x: dtype float64, expected float32"):
        run_graph(g, [randn(2, 3).astype(np.float64), randn(3, 4)])
    with pytest.raises(ReferenceRunError, match="takes 2 inputs, got 1"):
        run_graph(g, [randn(2, 3)])


def test_run_graph_keeps_intermediates():
    g = build_symbolic_graph()
    x = randn(2, 3, 8, seed=5)
    outs, kept = run_graph(g, [x], keep=["linear", "arange"])
    assert sorted(kept) == ["arange", "linear"]
    np.testing.assert_array_equal(kept["arange"], np.arange(3))
    assert len(outs) == 4
    _, everything = run_graph(g, [x], keep=["*"])
    assert len(everything) == len(g.nodes)


def test_kernel_failure_names_the_node():
    g = Graph()
    x = g.add_input("x", DType.int64, [3])
    node = g.create_node("div", [x, x], meta={"module": "blocks.0"})
    g.outputs = [node.output]
    with pytest.raises(
        ReferenceRunError, match=r"div node %div \(from blocks.0\) failed: div on integers"
    ):
        run_graph(g, [rng().integers(1, 5, 3)])


def test_sdpa_default_scale_is_one_over_sqrt_head_dim():
    q = randn(1, 2, 3, 16, seed=1)
    k = randn(1, 2, 3, 16, seed=2)
    v = randn(1, 2, 3, 16, seed=3)
    out = run1("sdpa", [q, k, v])
    scores = torch.softmax(t(q) @ t(k).transpose(-1, -2) / math.sqrt(16), dim=-1)
    assert_close(out, scores @ t(v))
