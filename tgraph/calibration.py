"""Calibration data for the compression passes: per-layer input statistics.

``tgraph.compile(model, x, pipeline="int4", calibration=[inputs, ...])``: each item is
called like ``example_inputs`` (a tensor, a tuple of args or a dict of kwargs). Just
before the pipeline's first lossy (compression) pass, the graph as optimized so far (fp32)
runs through the NumPy reference interpreter on every item, and each constant-weight
``linear`` layer gets ``H = X^T X`` (K, K) of its input rows X, summed over the items.
The statistics go to the passes as data, in ``graph.meta["calibration"]`` keyed by layer
name (passes import no interpreter); ``quantize-int4`` uses them for GPTQ error feedback
(``passes/_gptq.py``). They are removed from the graph once the compression passes have
run, so the compiled model does not hold them. Without ``calibration`` nothing changes.

Layers that share an input (q/k/v, gate/up before merging) share one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tgraph.ir import Graph
from tgraph.passes.manager import PassInstrument, PassSpec, get_pass
from tgraph.passes.quantize import CALIBRATION, layer_name

Samples = Sequence[Sequence[np.ndarray]]


class CalibrationError(ValueError):
    """Calibration inputs that do not fit the traced model."""


def as_samples(graph: Graph, calibration: Sequence[Any]) -> list[list[np.ndarray]]:
    """Each calibration item (called like the example inputs) as the graph's input arrays."""
    from tgraph.api import InputError, flatten_call
    from tgraph.frontend import normalize_inputs

    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Sequence):
        raise CalibrationError("calibration must be a list of inputs, each like example_inputs")
    if not calibration:
        raise CalibrationError("calibration is an empty list; give at least one input")
    out = []
    for i, item in enumerate(calibration):
        try:
            tensors = flatten_call(graph, *normalize_inputs(item))
        except InputError as e:
            raise CalibrationError(f"calibration[{i}]: {e}") from None
        out.append([t.detach().cpu().numpy() for t in tensors])
    return out


def collect_hessians(graph: Graph, samples: Samples) -> dict[str, np.ndarray]:
    """Layer name -> ``X^T X`` (float64, (K, K)) of its input over all ``samples``."""
    from tgraph.backends.reference import run_graph

    sites: dict[str, list[str]] = {}  # input value -> the layers that read it
    for node in graph.nodes:
        if node.op == "linear" and len(node.inputs) >= 2 and node.inputs[1].const is not None:
            sites.setdefault(node.inputs[0].name, []).append(layer_name(node.inputs[1]))
    sums: dict[str, np.ndarray] = {}
    for arrays in samples:
        _, kept = run_graph(graph, arrays, keep=sorted(sites))
        kept.update({v.name: a for v, a in zip(graph.inputs, arrays)})
        for name in sites:
            x = np.asarray(kept[name], np.float64)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
    return {layer: sums[name] for name, layers in sites.items() for layer in layers}


class Calibrator(PassInstrument):
    """Puts the calibration statistics on the graph before the first lossy pass and takes
    them off after the first pass that follows the lossy ones (the cleanup).

    ``items``: the user's calibration inputs, turned into arrays by :meth:`bind` once the
    model is traced; ``hessians``: statistics computed before (a generator's step graph
    reuses those of its plain forward, whose layers have the same names).
    """

    def __init__(self, items: Sequence[Any] = (), hessians: dict[str, np.ndarray] | None = None):
        self.items = items
        self.samples: list[list[np.ndarray]] = []
        self.hessians = hessians
        self.placed = False

    def bind(self, graph: Graph) -> None:
        """Check the items against the traced ``graph`` and convert them to its inputs."""
        if self.hessians is None and not self.samples:
            self.samples = as_samples(graph, self.items)

    def statistics(self, graph: Graph) -> dict[str, np.ndarray]:
        """The layers' ``X^T X`` on ``graph`` (the pipeline's graph just before compression),
        computed at the first call."""
        if self.hessians is None:
            self.hessians = collect_hessians(graph, self.samples)
            self.samples = []
        return self.hessians

    def run_start(self, graph: Graph) -> None:
        self.placed = False

    def before_pass(self, graph: Graph, spec: PassSpec, index: int) -> None:
        if not self.placed and get_pass(spec.name).lossy:
            graph.meta[CALIBRATION] = self.statistics(graph)
            self.placed = True

    def after_pass(self, graph: Graph, spec: PassSpec, index: int, changed: bool) -> None:
        if self.placed and not get_pass(spec.name).lossy:
            graph.meta.pop(CALIBRATION, None)


def drop(graph: Graph) -> Graph:
    """``graph`` without calibration statistics (a pipeline that ended on a lossy pass)."""
    graph.meta.pop(CALIBRATION, None)
    return graph
