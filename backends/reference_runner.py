"""Lowering for the reference backend: torch tensors in, NumPy interpreter, torch tensors out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tgraph.ir import Graph
from tgraph.tensors import to_numpy, to_torch

from .reference import run_graph


def lower(graph: Graph, device: str = "cpu", params=None):
    if device != "cpu":
        raise ValueError(f"the reference backend runs on cpu only, not {device!r}")

    def run(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs = run_graph(graph, [to_numpy(t) for t in inputs])
        return [to_torch(a) for a in outs]

    return run
