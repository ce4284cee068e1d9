"""Small graphs the IR tests build (tests/test_ir*.py)."""

from __future__ import annotations

import numpy as np

from tgraph.ir import DType, Graph, Node, SymDim

F32 = DType.float32
BATCH, SEQ = SymDim.symbol("batch"), SymDim.symbol("seq")


def new_rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_mlp(seed: int = 0) -> Graph:
    """x f32[batch,seq,8] -> linear(8->16) -> gelu -> linear(16->8) -> add x -> out."""
    rng = new_rng(seed)
    g = Graph("mlp")
    x = g.add_input("x", F32, [BATCH, SEQ, 8])
    w1 = g.add_initializer("fc1.weight", rng.standard_normal((16, 8)).astype(np.float32), True)
    b1 = g.add_initializer("fc1.bias", rng.standard_normal(16).astype(np.float32), True)
    w2 = g.add_initializer("fc2.weight", rng.standard_normal((8, 16)).astype(np.float32), True)
    h = g.create_node("linear", [x, w1, b1], meta={"module": "fc1"}).output
    a = g.create_node("gelu", [h], meta={"module": "act"}).output
    y = g.create_node("linear", [a, w2], meta={"module": "fc2"}).output
    out = g.create_node("add", [y, x]).output
    g.outputs = [out]
    return g


def chain(n: int = 3) -> tuple[Graph, list[Node]]:
    """x -> neg -> neg -> ... (n nodes) -> out."""
    g = Graph("chain")
    v = g.add_input("x", F32, [SEQ, 4])
    nodes = []
    for _ in range(n):
        nodes.append(g.create_node("neg", [v]))
        v = nodes[-1].output
    g.outputs = [v]
    return g, nodes


def node_by_op(g: Graph, op: str) -> Node:
    return next(n for n in g.nodes if n.op == op)
