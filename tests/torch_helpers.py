"""Shared helpers of the torch-backend tests: one-node graphs, reference comparisons and a
tiny module."""

from __future__ import annotations

import numpy as np
import torch

from tgraph.backends.reference import run_graph
from tgraph.backends.torch_backend import lower
from tgraph.ir import DType, Graph
from tgraph.tensors import to_torch


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def run_torch(graph: Graph, arrays: list[np.ndarray], runner=None) -> list[np.ndarray]:
    runner = runner or lower(graph, "cpu")
    with torch.no_grad():
        outs = runner([to_torch(np.array(a, copy=True)) for a in arrays])
    return [o.detach().numpy() for o in outs]


def assert_matches_reference(graph: Graph, arrays: list[np.ndarray], runner=None, tol=1e-5):
    want = run_graph(graph, arrays)
    got = run_torch(graph, arrays, runner)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(g, w)


def one_node(op: str, inputs: list, attrs=None, consts: tuple[int, ...] = ()):
    """A graph of one ``op`` node; inputs listed in ``consts`` become initializers."""
    g = Graph(op)
    values, feeds = [], []
    for i, a in enumerate(inputs):
        if a is None:
            values.append(None)
        elif i in consts:
            values.append(g.add_const(a, DType.from_numpy(a.dtype), f"c{i}"))
        else:
            values.append(g.add_input(f"in{i}", DType.from_numpy(a.dtype), a.shape))
            feeds.append(a)
    node = g.create_node(op, values, attrs)
    g.outputs = list(node.outputs)
    g.verify()
    return g, feeds


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.register_buffer("offset", torch.randn(6))

    def forward(self, x):
        return self.norm(self.proj(x)) * 2.0 + self.offset
