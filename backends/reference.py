"""The reference backend: a NumPy interpreter of the IR.

Slow and simple on purpose. Every op runs through the NumPy kernel of its registry
entry, so this is the oracle that pass tests and constant folding use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tgraph.ir import DType, Graph, SymDim, Value
from tgraph.ir.dims import format_shape
from tgraph.ir.ops import get_op, resolve_attrs


class ReferenceRunError(RuntimeError):
    """An input does not fit the graph, or a kernel failed."""


def bind_symbols(graph: Graph, arrays: Sequence[np.ndarray]) -> dict[str, int]:
    """Values of the graph's symbolic dims, read off the input arrays' shapes.

    Raises ReferenceRunError naming the input when ranks, static dims or the same symbol
    in two places disagree.
    """
    if len(arrays) != len(graph.inputs):
        raise ReferenceRunError(
            f"graph {graph.name} takes {len(graph.inputs)} inputs, got {len(arrays)}"
        )
    bindings: dict[str, int] = {}
    for v, a in zip(graph.inputs, arrays):
        if a.ndim != v.rank:
            raise ReferenceRunError(
                f"input {v.name}: rank {a.ndim}, expected shape {format_shape(v.shape)}"
            )
        for axis, (want, have) in enumerate(zip(v.shape, a.shape)):
            if isinstance(want, SymDim):
                seen = bindings.setdefault(want.name, int(have))
                if seen != have:
                    raise ReferenceRunError(
                        f"input {v.name}: dim {axis} is {have}, but {want.name} is {seen} elsewhere"
                    )
            elif want != have:
                raise ReferenceRunError(
                    f"input {v.name}: dim {axis} is {have}, expected shape {format_shape(v.shape)}"
                )
    return bindings


def _check_dtype(v: Value, a: np.ndarray) -> np.ndarray:
    if a.dtype != v.dtype.numpy:
        raise ReferenceRunError(f"input {v.name}: dtype {a.dtype}, expected {v.dtype.name}")
    return a


def run_graph(
    graph: Graph,
    inputs: Sequence[np.ndarray],
    *,
    keep: Sequence[str] = (),
) -> list[np.ndarray] | tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Run ``graph`` on NumPy arrays and return its outputs.

    Args:
        graph: the graph to interpret.
        inputs: one array per graph input, in order.
        keep: names of intermediate values to return as well (``"*"`` keeps every value);
            when given, the result is ``(outputs, {name: array})``.
    """
    arrays = [_check_dtype(v, np.asarray(a)) for v, a in zip(graph.inputs, inputs)]
    bindings = bind_symbols(graph, arrays)
    env: dict[int, np.ndarray] = {id(v): a for v, a in zip(graph.inputs, arrays)}
    for v in graph.initializers.values():
        env[id(v)] = v.const
    keep_all = "*" in keep
    kept: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        args = [None if v is None else env[id(v)] for v in node.inputs]
        attrs = resolve_attrs(node.attrs, bindings)
        for v, r in zip(node.outputs, _guarded(node, get_op(node.op).run, args, attrs)):
            env[id(v)] = r = _typed(node, v, r, bindings)
            if keep_all or v.name in keep:
                kept[v.name] = r
    outputs = [env[id(v)] for v in graph.outputs]
    return (outputs, kept) if keep else outputs


def _guarded(node, fn, *args, **kwargs) -> list[np.ndarray]:
    """``fn(*args, **kwargs)``; a failure names the node."""
    try:
        # Like torch, produce inf/nan silently (T5 takes log(0) inside a where()).
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    except Exception as e:  # a kernel bug or a bad shape: say where
        module = node.meta.get("module")
        where = f" (from {module})" if module else ""
        raise ReferenceRunError(f"{node.op} node %{node.name}{where} failed: {e}") from e


def _typed(node, v: Value, r: np.ndarray, bindings: Mapping[str, int]) -> np.ndarray:
    """A kernel's result, held to the type the IR inferred: the oracle is the strictest
    backend, so a kernel that disagrees with shape inference is a bug, not something to
    cast away."""
    from tgraph.ir import evaluate

    r = np.asarray(r)
    try:
        want = tuple(evaluate(d, bindings) for d in v.shape)
    except KeyError:  # a dim of a symbol no input binds: nothing to compare with
        want = None
    if r.dtype != v.dtype.numpy or (want is not None and r.shape != want):
        module = node.meta.get("module")
        where = f" (from {module})" if module else ""
        raise ReferenceRunError(
            f"{node.op} node %{node.name}{where}: kernel returned {r.dtype}{list(r.shape)} "
            f"for %{v.name}, inferred {v.dtype.name}{list(want) if want else list(v.shape)}"
        )
    return r


def run_ranks(graphs: Sequence[Graph], inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Run every rank's graph of a sharded model in this process, in lockstep.

    ``graphs[r]`` is rank r's graph (``passes.shard.shard_all``): the same nodes, each
    rank's own weights. Ordinary ops run per rank; a collective (``all_reduce``,
    ``all_gather``) combines the ranks' inputs as ``torch.distributed`` would. Every rank
    gets the same ``inputs``; returns each rank's outputs.
    """
    from tgraph.ir.ops.collective import COMBINE

    arrays = [_check_dtype(v, np.asarray(a)) for v, a in zip(graphs[0].inputs, inputs)]
    bindings = bind_symbols(graphs[0], arrays)
    envs = []
    for g in graphs:
        env = {id(v): a for v, a in zip(g.inputs, arrays)}
        env.update({id(v): v.const for v in g.initializers.values()})
        envs.append(env)
    for nodes in zip(*(g.nodes for g in graphs)):
        first = nodes[0]
        if len({n.op for n in nodes}) != 1:
            raise ReferenceRunError(f"ranks disagree at %{first.name}: not one sharded model")
        attrs = resolve_attrs(first.attrs, bindings)
        args = [
            [None if v is None else env[id(v)] for v in n.inputs] for n, env in zip(nodes, envs)
        ]
        if first.op in COMBINE:
            combined = _guarded(first, COMBINE[first.op], [a[0] for a in args], **attrs)
            per_rank = [[c] for c in combined]
        else:
            per_rank = [_guarded(n, get_op(n.op).run, a, attrs) for n, a in zip(nodes, args)]
        for n, env, results in zip(nodes, envs, per_rank):
            for v, r in zip(n.outputs, results):
                env[id(v)] = _typed(n, v, r, bindings)
    return [[env[id(v)] for v in g.outputs] for g, env in zip(graphs, envs)]


def random_inputs(
    graph: Graph, bindings: Mapping[str, int], seed: int = 0, int_high: int = 16
) -> list[np.ndarray]:
    """Seeded random arrays that fit the graph inputs with the given symbol values."""
    from tgraph.ir import evaluate

    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        shape = tuple(evaluate(d, bindings) for d in v.shape)
        if v.dtype.is_float:
            out.append(rng.standard_normal(shape).astype(v.dtype.numpy))
        elif v.dtype is DType.bool:
            out.append(rng.random(shape) < 0.8)
        else:
            high = _index_bound(v, int_high)
            out.append(rng.integers(0, high, size=shape).astype(v.dtype.numpy))
    return out


def _index_bound(v: Value, default: int) -> int:
    """Exclusive upper bound for a random integer input: masks get 0/1, and an input that
    indexes a constant table (an embedding) stays below the table's size."""
    if "mask" in v.name:
        return 2
    bounds = [default]
    for node, index in v.uses():
        if node.op == "gather" and index == 1 and node.inputs[0].const is not None:
            bounds.append(node.inputs[0].shape[node.attrs["axis"]])
    return max(1, min(bounds))
