"""The one shared helper for pass tests.

``check_pass`` runs a pipeline on a graph, then checks with the reference interpreter that
the outputs are unchanged on several seeds and batch/sequence sizes, that the expected ops
appeared and disappeared, that ``changed`` is right, and that a second run changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

import tgraph
from tgraph.backends.reference import random_inputs, run_graph
from tgraph.ir import Graph
from tgraph.passes.manager import optimize

SIZES = ((2, 16), (1, 7), (3, 5))


def trace_module(module: torch.nn.Module, *example: torch.Tensor, **kwargs: torch.Tensor) -> Graph:
    """Trace a small module (eval mode) with batch/seq dims symbolic."""
    return tgraph.trace(module.eval(), kwargs if kwargs else tuple(example))


def bindings_for(graph: Graph, batch: int, seq: int) -> dict[str, int]:
    out = {}
    for name in graph.symbols():
        out[name] = batch if name == "batch" else seq
    return out


def assert_same_outputs(
    before: Graph,
    after: Graph,
    sizes: Iterable[tuple[int, int]] = SIZES,
    seeds: Sequence[int] = (0, 1),
    rtol: float = 1e-4,
    atol: float = 1e-4,
    int_high: int = 16,
) -> None:
    """Reference outputs of ``before`` and ``after`` agree on random inputs at every size."""
    for batch, seq in sizes:
        for seed in seeds:
            inputs = random_inputs(before, bindings_for(before, batch, seq), seed, int_high)
            want = run_graph(before, inputs)
            got = run_graph(after, inputs)
            assert len(want) == len(got)
            for w, g in zip(want, got):
                assert w.shape == g.shape and w.dtype == g.dtype, (w.shape, g.shape)
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def check_pass(
    graph: Graph,
    pipeline: str,
    *,
    appear: Iterable[str] = (),
    disappear: Iterable[str] = (),
    changed: bool = True,
    sizes: Iterable[tuple[int, int]] = SIZES,
    **tolerances: Any,
) -> tuple[Graph, list]:
    """Run ``pipeline`` on ``graph`` and check it (see the module docstring).

    Returns the optimized graph and the manager's records.
    """
    optimized, records = optimize(graph, pipeline)
    assert graph.dump() != optimized.dump() if changed else graph.dump() == optimized.dump()
    assert any(r.changed for r in records) == changed, [r.to_json() for r in records]
    hist = optimized.op_histogram()
    for op in appear:
        assert hist.get(op, 0) > 0, f"{op} did not appear: {hist}"
    for op in disappear:
        assert hist.get(op, 0) == 0, f"{op} is still there: {hist}"
    assert_same_outputs(graph, optimized, sizes, **tolerances)
    again, again_records = optimize(optimized, pipeline)
    assert again.dump() == optimized.dump(), "a second run changed the graph"
    assert not any(r.changed for r in again_records)
    return optimized, records


def matches(records: list, rule: str) -> int:
    """How many times ``rule`` fired across the records."""
    return sum(r.stats.get("matches", {}).get(rule, 0) for r in records)


def rejections(records: list, rule: str) -> list[dict]:
    return [x for r in records for x in r.stats.get("rejected", []) if x["rule"] == rule]
