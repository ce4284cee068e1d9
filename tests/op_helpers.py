"""Shared helpers of the op tests (tests/test_ops*.py): one-node graphs run four ways."""

from __future__ import annotations

import numpy as np
import torch

from tgraph.backends.reference import run_graph
from tgraph.ir import DType, Graph, SymDim
from tgraph.ir.ops import get_op

F32, I64 = DType.float32, DType.int64
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")
RTOL = ATOL = 1e-5


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def positive(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).uniform(0.5, 2.0, shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def assert_close(actual: np.ndarray, expected: torch.Tensor, rtol=RTOL, atol=ATOL) -> None:
    torch.testing.assert_close(t(actual), expected, rtol=rtol, atol=atol)


def run_op(op: str, inputs, attrs=None) -> list[np.ndarray]:
    """Run one op on ``inputs`` (None for an absent optional input) four ways and cross-check.

    The node's inferred types must match the kernel's raw output, the graph must verify,
    and the reference interpreter must give the same arrays as the bare kernel.
    """
    g = Graph(op)
    values = [
        None if a is None else g.add_input(f"in{i}", DType.from_numpy(a.dtype), a.shape)
        for i, a in enumerate(inputs)
    ]
    node = g.create_node(op, values, attrs)
    g.outputs = list(node.outputs)
    g.verify()
    raw = get_op(op).run(list(inputs), node.attrs)
    assert len(raw) == len(node.outputs)
    for v, r in zip(node.outputs, raw):
        assert r.shape == tuple(v.shape), f"{op}: kernel shape {r.shape}, inferred {v.type}"
        assert r.dtype == v.dtype.numpy, f"{op}: kernel dtype {r.dtype}, inferred {v.type}"
    outs = run_graph(g, [a for a in inputs if a is not None])
    for r, o in zip(raw, outs):
        np.testing.assert_array_equal(r, o)
    return outs


def run1(op: str, inputs, attrs=None) -> np.ndarray:
    (out,) = run_op(op, inputs, attrs)
    return out
