"""Op registry checks of reductions, normalization, softmax, matmul and linear (see test_ops.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_helpers import (
    BATCH,
    F32,
    SEQ,
    assert_close,
    randn,
    rng,
    run1,
    t,
)  # fmt: skip

from tgraph.ir import DType, Graph, IRError

# -- reductions ---------------------------------------------------------------------------------------


def _torch_reduce(op: str, x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    if op == "reduce_prod":  # torch.prod takes one dim at a time
        for d in sorted((d % x.ndim for d in dims), reverse=True):
            x = torch.prod(x, d, keepdim=keepdim)
        return x
    fn = {
        "reduce_sum": torch.sum,
        "reduce_mean": torch.mean,
        "reduce_max": torch.amax,
        "reduce_min": torch.amin,
    }[op]
    return fn(x, dim=dims, keepdim=keepdim)


@pytest.mark.parametrize(
    "op", ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod"]
)
@pytest.mark.parametrize("axes", [(), (1,), (-1,), (0, 2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_reduce(op, axes, keepdim):
    x = randn(2, 3, 4, seed=len(axes))
    out = run1(op, [x], {"axes": axes, "keepdim": keepdim})
    dims = axes or (0, 1, 2)
    assert_close(out, _torch_reduce(op, t(x), dims, keepdim))


@pytest.mark.parametrize(
    "axes,correction,keepdim", [((), 0, False), ((1,), 1, True), ((0, 2), 1, False)]
)
def test_var(axes, correction, keepdim):
    x = randn(3, 4, 5, seed=9)
    out = run1("var", [x], {"axes": axes, "correction": correction, "keepdim": keepdim})
    expected = torch.var(t(x), dim=axes or None, correction=correction, keepdim=keepdim)
    assert_close(out, expected)


@pytest.mark.parametrize("axis,keepdim", [(0, False), (-1, False), (1, True)])
def test_argmax(axis, keepdim):
    x = randn(3, 4, 5, seed=11)
    out = run1("argmax", [x], {"axis": axis, "keepdim": keepdim})
    assert_close(out, torch.argmax(t(x), dim=axis, keepdim=keepdim), rtol=0, atol=0)


@pytest.mark.parametrize("axis,dtype", [(0, None), (-1, None), (1, DType.float64)])
def test_cumsum(axis, dtype):
    x = randn(3, 4, 5, seed=12)
    out = run1("cumsum", [x], {"axis": axis, "dtype": dtype})
    expected = torch.cumsum(t(x), dim=axis, dtype=getattr(torch, dtype.name) if dtype else None)
    assert_close(out, expected)


def test_cumsum_ints():
    x = rng(3).integers(-9, 9, (4, 6))
    assert_close(run1("cumsum", [x], {"axis": 1}), torch.cumsum(t(x), 1), rtol=0, atol=0)


# -- normalization and activations over an axis --------------------------------------------------------


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, axis):
    x = randn(2, 3, 6, seed=13) * 4
    out = run1(op, [x], {"axis": axis})
    fn = torch.softmax if op == "softmax" else torch.log_softmax
    assert_close(out, fn(t(x), dim=axis))


@pytest.mark.parametrize(
    "axis,params", [(-1, "wb"), (-1, ""), (-1, "b"), (-2, "wb"), (1, "w")], ids=str
)
def test_layer_norm(axis, params):
    x = randn(2, 3, 8, seed=14) * 2 + 0.5
    normalized = x.shape[axis % 3 :]
    w = randn(*normalized, seed=15) if "w" in params else None
    b = randn(*normalized, seed=16) if "b" in params else None
    inputs = [x, w, b] if b is not None else [x, w]
    out = run1("layer_norm", inputs, {"axis": axis, "eps": 1e-5})
    expected = F.layer_norm(
        t(x), normalized, None if w is None else t(w), None if b is None else t(b), eps=1e-5
    )
    assert_close(out, expected)


@pytest.mark.parametrize("axis,weighted", [(-1, True), (-1, False), (-2, True)])
def test_rms_norm(axis, weighted):
    x = randn(2, 3, 8, seed=17)
    normalized = x.shape[axis % 3 :]
    w = randn(*normalized, seed=18) if weighted else None
    out = run1("rms_norm", [x, w] if weighted else [x], {"axis": axis, "eps": 1e-6})
    assert_close(out, F.rms_norm(t(x), normalized, None if w is None else t(w), eps=1e-6))


def test_norm_parameter_shape_is_checked():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, SEQ, 8])
    w = g.add_initializer("w", randn(4))
    with pytest.raises(IRError, match=r"norm: parameter shape \(4,\) != normalized shape \(8,\)"):
        g.create_node("layer_norm", [x, w])


# -- matmul and linear ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((2, 1, 3, 4), (5, 4, 6)),
        ((4,), (2, 4, 3)),
        ((2, 3, 4), (4,)),
        ((4,), (4, 3)),
        ((3, 4), (4,)),
        pytest.param(
            (4,),
            (4,),
        ),
    ],
    ids=str,
)
def test_matmul(a_shape, b_shape):
    a, b = randn(*a_shape, seed=1), randn(*b_shape, seed=2)
    out = run1("matmul", [a, b])
    assert_close(out, torch.matmul(t(a), t(b)))


def test_matmul_inference_errors():
    g = Graph()
    a = g.add_input("a", F32, [3, 4])
    b = g.add_input("b", F32, [5, 6])
    with pytest.raises(IRError, match=r"matmul: inner dims differ \(4 vs 5\)"):
        g.create_node("matmul", [a, b])
    c = g.add_input("c", F32, [BATCH, SEQ, 4])
    d = g.add_input("d", F32, [BATCH, 4, SEQ])
    assert g.create_node("matmul", [c, d]).output.shape == (BATCH, SEQ, SEQ)
    e = g.add_input("e", F32, [4, 7])
    assert g.create_node("matmul", [c, e]).output.shape == (BATCH, SEQ, 7)
    with pytest.raises(IRError, match="matmul: cannot broadcast dims batch and seq"):
        g.create_node("matmul", [c, g.add_input("f", F32, [SEQ, 4, 7])])


@pytest.mark.parametrize("x_shape,bias", [((2, 3, 8), True), ((2, 3, 8), False), ((8,), True)])
def test_linear(x_shape, bias):
    x, w = randn(*x_shape, seed=1), randn(5, 8, seed=2)
    b = randn(5, seed=3) if bias else None
    out = run1("linear", [x, w, b] if bias else [x, w])
    assert_close(out, F.linear(t(x), t(w), None if b is None else t(b)))


def test_linear_inference_errors():
    g = Graph()
    x = g.add_input("x", F32, [BATCH, 8])
    w = g.add_initializer("w", randn(5, 7))
    with pytest.raises(IRError, match="linear: input features 8 != weight in_features 7"):
        g.create_node("linear", [x, w])
    w2 = g.add_initializer("w2", randn(5, 8))
    b = g.add_initializer("b", randn(4))
    with pytest.raises(IRError, match=r"linear: bias shape \(4,\) != \(5,\)"):
        g.create_node("linear", [x, w2, b])
