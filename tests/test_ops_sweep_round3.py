"""Op registry checks of the ops the third sweep round added: scatter_reduce, the bitwise ops
on integers, and arange counting down (see tests/test_frontend_sweep_round3.py end to end)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from op_helpers import assert_close, randn, rng, run1, t

from tgraph.ir import DType, Graph, IRError, SymDim


@pytest.mark.parametrize("reduce, torch_name", [("sum", "sum"), ("prod", "prod"),
                                                ("max", "amax"), ("min", "amin")])  # fmt: skip
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter_reduce_against_torch(reduce, torch_name, axis):
    x = randn(5, 6, seed=1)
    index = rng(2).integers(0, x.shape[axis], size=(4, 3))  # repeated targets, a smaller index
    updates = randn(4, 3, seed=3)
    got = run1("scatter_reduce", [x, index, updates], {"axis": axis, "reduce": reduce})
    want = torch.scatter_reduce(t(x), axis, t(index), t(updates), torch_name, include_self=True)
    assert_close(got, want)


def test_scatter_reduce_rejects_an_unknown_reduction():
    g = Graph("scatter")
    x = g.add_input("x", DType.float32, (4, 3))
    index = g.add_input("i", DType.int64, (2, 3))
    with pytest.raises(IRError, match="reduce 'mean', want one of"):
        g.create_node("scatter_reduce", [x, index, x], {"axis": 0, "reduce": "mean"})


@pytest.mark.parametrize("op", ["bitwise_and", "bitwise_or", "bitwise_xor"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_bitwise_ops_on_integers(op, dtype):
    a = rng(1).integers(-50, 50, size=(3, 4)).astype(dtype)
    b = rng(2).integers(-50, 50, size=(4,)).astype(dtype)
    got = run1(op, [a, b])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, getattr(torch, op)(t(a), t(b)).numpy())
    np.testing.assert_array_equal(run1("bitwise_not", [a]), (~t(a)).numpy())


@pytest.mark.parametrize(
    "start, end, step", [(7, -1, -1), (4, -6, -3), (3, 3, -1), (0, 5, -2)]
)  # empty
def test_arange_counts_down(start, end, step):
    got = run1("arange", [], {"start": start, "end": end, "step": step, "dtype": DType.int64})
    np.testing.assert_array_equal(got, np.array(range(start, end, step), dtype=np.int64))


def test_arange_counting_down_from_a_symbolic_start_infers_its_length():
    g = Graph("arange")
    seq = SymDim.symbol("seq")
    y = g.create_node("arange", [], {"start": seq, "end": -2, "step": -3}).output
    assert y.shape[0] == (seq + 4) // 3  # range(seq, -2, -3) is as long as range(-2, seq, 3)
    with pytest.raises(IRError, match="step must be positive, got 0"):
        g.create_node("arange", [], {"start": 0, "end": 4, "step": 0})
