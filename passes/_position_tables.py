"""Tables of a value that is a function of the token position only (fold-cache-rotary).

In a generation step graph a token's position is ``past_len[:, None] + arange(seq)[None, :]``
(tgraph/generation/capture.py), which is also its cache slot. A value computed from that
position and constants alone (RoPE's cos and sin: cast, multiply by inv_freq, concat, cos)
is a table indexed by position: :func:`position_table` finds the subgraph between the
position and the value, evaluates it with the op registry's kernels on the positions
0..P-1, and checks the claim on random positions of another shape. Attributes that name
the position's symbolic batch and sequence dims (GPT-J's repeat_interleave expands to
(batch, seq, 1, R/2, 2)) take the sizes of the positions each evaluation runs on.
"""

from __future__ import annotations

import numpy as np

from tgraph.ir import Graph, Node, SymDim, Value, simplify
from tgraph.ir.dims import evaluate
from tgraph.ir.ops import get_op

_CHECK_SHAPE = (2, 5)  # random positions the table must reproduce


def is_position(v: Value, past_len: Value, seq) -> bool:
    """Whether v is add(unsqueeze(past_len, 1), unsqueeze(arange(0, seq, 1), 0))."""
    node = v.producer
    if node is None or node.op != "add" or len(node.inputs) != 2:
        return False
    a, b = (x.producer for x in node.inputs)
    if a is None or b is None:
        return False
    if a.op == "unsqueeze" and a.inputs[0] is not past_len:
        a, b = b, a
    if (a.op, b.op) != ("unsqueeze", "unsqueeze") or a.inputs[0] is not past_len:
        return False
    steps = b.inputs[0].producer
    if tuple(a.attrs["axes"]) != (1,) or tuple(b.attrs["axes"]) != (0,) or steps is None:
        return False
    if steps.op != "arange":
        return False
    s = steps.attrs
    return (s["start"], s["step"]) == (0, 1) and simplify(s["end"]) == simplify(seq)


def _cone(v: Value, past_len: Value, seq) -> tuple[list[Node], Value | None, str | None]:
    """The nodes between the position and v (graph order), the position, or why not."""
    seen: dict[int, Node] = {}
    position = None
    stack = [v]
    while stack:
        u = stack.pop()
        if u.const is not None:
            continue
        if is_position(u, past_len, seq):
            position = u
            continue
        if u.producer is None:
            return [], None, f"depends on graph input %{u.name}, not only on the position"
        if id(u.producer) not in seen:
            seen[id(u.producer)] = u.producer
            stack.extend(x for x in u.producer.inputs if x is not None)
    if position is None:
        return [], None, "does not depend on the position past_len + arange(seq)"
    graph_order = [n for n in v.producer.graph.nodes if id(n) in seen]
    return graph_order, position, None


def _symbols(x) -> set[str]:
    if isinstance(x, SymDim):
        return x.free_symbols()
    if isinstance(x, tuple):
        return set().union(*map(_symbols, x))
    return set()


def _bind(x, bindings: dict[str, int]):
    """An attribute with its symbolic dims replaced by their sizes in ``bindings``."""
    if isinstance(x, SymDim):
        return evaluate(x, bindings)
    if isinstance(x, tuple):
        return tuple(_bind(y, bindings) for y in x)
    return x


def _evaluate(nodes: list[Node], position: Value, positions: np.ndarray, v: Value) -> np.ndarray:
    env: dict[int, np.ndarray] = {id(position): positions.astype(position.dtype.numpy)}
    bindings = {
        d.name: n for d, n in zip(position.shape, positions.shape)
        if isinstance(d, SymDim) and d.is_symbol()
    }  # fmt: skip

    def read(x: Value | None):
        if x is None:
            return None
        return x.const if x.const is not None else env[id(x)]

    for node in nodes:
        with np.errstate(all="ignore"):
            attrs = {k: _bind(a, bindings) for k, a in node.attrs.items()}
            results = get_op(node.op).run([read(x) for x in node.inputs], attrs)
        for out, r in zip(node.outputs, results):
            env[id(out)] = np.asarray(r, dtype=out.dtype.numpy)
    return env[id(v)]


def position_table(graph: Graph, v: Value, past_len: Value, seq, limit: int,
                   heads_first: bool) -> np.ndarray | str:  # fmt: skip
    """v's (limit, R) table by position, for v (B|1, 1, T, R) (heads_first) or (B|1, T, 1, R);
    a string says why v is not a function of the position only."""
    nodes, position, reason = _cone(v, past_len, seq)
    if reason:
        return reason
    known = {d.name for d in position.shape if isinstance(d, SymDim) and d.is_symbol()}
    for node in nodes:
        free = _symbols(tuple(node.attrs.values())) - known
        if free:
            return f"node %{node.name} ({node.op}) has attributes with symbolic dims {sorted(free)}"
    every = np.arange(limit)[None, :]  # (1, P): one row, every position
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, limit, _CHECK_SHAPE)
    try:
        table = _evaluate(nodes, position, every, v)
        check = _evaluate(nodes, position, drawn, v)
    except Exception as e:  # noqa: BLE001 - a subgraph the kernels cannot run is not folded
        return f"evaluating it on positions failed: {type(e).__name__}: {e}"
    axis = 2 if heads_first else 1  # the token axis
    if table.ndim != 4 or table.shape[0] != 1 or table.shape[axis] != limit:
        return f"evaluated on (1, {limit}) positions it has shape {list(table.shape)}"
    table = np.squeeze(table, axis=(0, 3 - axis))  # (P, R)
    want = table[drawn]  # (2, 5, R)
    got = np.squeeze(check, axis=3 - axis)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=1e-6):
        return "it is not a function of the position alone (random positions disagree)"
    return table
