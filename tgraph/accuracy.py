"""The accuracy budget of compressed pipelines: fall back to fp32 layer by layer.

``tgraph.compile(model, x, pipeline="int8", accuracy={"max_rel_error": 1e-2})`` splits the
pipeline at its first lossy pass (a pass class with ``lossy = True``: ``quantize-int8``,
``quantize-int4``, ``mixed-precision``, ...). The head (the fp32 optimizations) runs once; its graph, run through
the NumPy reference interpreter on the sample inputs, gives the fp32 outputs and the input
of every linear layer. Each layer's *sensitivity* is the relative error of its own output
when only it is compressed, as the lossy pass itself computes it (``approximate_linear``). The tail (compression and cleanup) then runs with the
``keep=`` option naming the k most sensitive layers, and the whole compressed graph is
compared with the fp32 outputs; k = 0 first, then a binary search for the smallest k that
meets the budget. Error is the largest relative L2 error over the float outputs; for
outputs with a last dim larger than one (logits), top-1 agreement is reported as well,
and ``min_top1`` in the budget makes it part of the test.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from tgraph.ir import Graph
from tgraph.passes.manager import (
    Pass,
    PassManager,
    PassRecord,
    PassSpec,
    format_pipeline,
    get_pass,
    lossy_passes,
    parse_pipeline,
)

_BUDGET_KEYS = {"max_rel_error", "min_top1"}


class AccuracyError(ValueError):
    """A malformed accuracy budget, or a pipeline without a compression pass."""


@dataclass
class AccuracyReport:
    """What the budget measured and decided (``CompiledModel.accuracy``)."""

    budget: dict[str, float]
    rel_error: float  # of the chosen graph: the largest relative L2 error over float outputs
    top1_agreement: dict[str, float]  # output name -> fraction of rows whose argmax agrees
    converted: list[str]  # layers left compressed
    kept: list[str]  # layers the budget kept in fp32, most sensitive first
    sensitivity: dict[str, float]  # layer -> relative error of its own output, compressed alone
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"kept": k, "rel_error": e, ...}
    met: bool = True

    def summary(self) -> str:
        top1 = ", ".join(f"{k} {v:.1%}" for k, v in self.top1_agreement.items())
        kept = ", ".join(self.kept) if self.kept else "none"
        verdict = "met" if self.met else "NOT met"
        return (
            f"accuracy budget {self.budget} {verdict}: rel error {self.rel_error:.3g}"
            + (f", top-1 agreement {top1}" if top1 else "")
            + f"; {len(self.converted)} layers compressed, kept in fp32: {kept}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "rel_error": self.rel_error,
            "top1_agreement": self.top1_agreement,
            "converted": self.converted,
            "kept": self.kept,
            "sensitivity": self.sensitivity,
            "trials": self.trials,
            "met": self.met,
        }


def check_budget(accuracy: dict[str, Any]) -> dict[str, float]:
    """The budget with its keys checked (``max_rel_error`` required, ``min_top1`` optional)."""
    if not isinstance(accuracy, dict) or "max_rel_error" not in accuracy:
        raise AccuracyError('accuracy must be a dict like {"max_rel_error": 1e-2}')
    unknown = sorted(set(accuracy) - _BUDGET_KEYS)
    if unknown:
        raise AccuracyError(f"unknown accuracy key(s) {unknown}; known: {sorted(_BUDGET_KEYS)}")
    budget = {k: float(v) for k, v in accuracy.items()}
    if not budget["max_rel_error"] > 0:
        raise AccuracyError("accuracy: max_rel_error must be > 0")
    return budget


def _lossy(spec: PassSpec) -> bool:
    return get_pass(spec.name).lossy


def split_pipeline(specs: Sequence[PassSpec]) -> tuple[list[PassSpec], list[PassSpec]]:
    """(head, tail): the tail starts at the first lossy (compression) pass."""
    for i, spec in enumerate(specs):
        if _lossy(spec):
            return list(specs[:i]), list(specs[i:])
    raise AccuracyError(
        "an accuracy budget needs a compression pipeline (int8, int4, bf16, fp16) or a "
        f"pipeline with one of the lossy passes {', '.join(lossy_passes())}"
    )


def _with_keep(tail: Sequence[PassSpec], layers: Sequence[str]) -> list[PassSpec]:
    keep = "|".join(glob.escape(name) for name in layers)
    out = []
    for spec in tail:
        if layers and _lossy(spec):
            options = [(k, v) for k, v in spec.options if k != "keep"] + [("keep", keep)]
            spec = PassSpec(spec.name, tuple(options))
        out.append(spec)
    return out


# -- measuring ---------------------------------------------------------------------------------


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64), want.astype(np.float64)
    denom = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / denom) if denom > 0 else float(np.abs(got).max())


def compare_outputs(
    graph: Graph, got: Sequence[Sequence[np.ndarray]], want: Sequence[Sequence[np.ndarray]]
) -> tuple[float, dict[str, float]]:
    """Largest relative L2 error over float outputs and samples, and top-1 agreement."""
    worst = 0.0
    agree: dict[str, list[float]] = {}
    for g_out, w_out in zip(got, want):
        for v, g, w in zip(graph.outputs, g_out, w_out):
            if not v.dtype.is_float or g.size == 0:
                continue
            worst = max(worst, _rel_error(g, w))
            if g.ndim >= 2 and g.shape[-1] > 1:
                same = np.argmax(g, axis=-1) == np.argmax(w, axis=-1)
                agree.setdefault(v.name, []).append(float(same.mean()))
    return worst, {k: float(np.mean(v)) for k, v in agree.items()}


def _layer_sensitivity(
    head: Graph, layers: set[str], samples: Sequence[Sequence[np.ndarray]], compressor: Pass
) -> dict[str, float]:
    """Relative error of each layer's output when only that layer is compressed."""
    from tgraph.backends.reference import run_graph
    from tgraph.passes.quantize import layer_name

    sites = []
    for node in head.nodes:
        if node.op == "linear" and len(node.inputs) >= 2 and node.inputs[1].const is not None:
            name = layer_name(node.inputs[1])
            if name in layers:
                sites.append((name, node))
    wanted = sorted({n.inputs[0].name for _, n in sites})
    errors: dict[str, float] = {}
    for arrays in samples:
        _, kept = run_graph(head, arrays, keep=wanted)
        kept.update({v.name: a for v, a in zip(head.inputs, arrays)})
        for name, node in sites:
            x = kept[node.inputs[0].name]
            w = np.asarray(node.inputs[1].const, dtype=np.float32)
            b = None if len(node.inputs) < 3 or node.inputs[2] is None else node.inputs[2].const
            exact = np.matmul(x.astype(np.float64), w.T.astype(np.float64))
            approx = compressor.approximate_linear(x, w)
            if b is not None:
                exact, approx = exact + b, approx + b
            errors[name] = max(errors.get(name, 0.0), _rel_error(approx, exact))
    return errors


# -- the search ------------------------------------------------------------------------------------


class _Trial(NamedTuple):
    graph: Graph
    records: list[PassRecord]
    rel_error: float
    top1: dict[str, float]
    met: bool


def _meets(budget: dict[str, float], err: float, top1: dict[str, float]) -> bool:
    ok = err <= budget["max_rel_error"]
    if "min_top1" in budget and top1:
        ok = ok and min(top1.values()) >= budget["min_top1"]
    return ok


def fit_budget(
    graph: Graph,
    pipeline: str | Sequence[str],
    accuracy: dict[str, Any],
    samples: Sequence[Sequence[np.ndarray]],
    progress: Callable[[str], None] | None = None,
) -> tuple[Graph, list[PassRecord], str, AccuracyReport]:
    """Run ``pipeline`` over ``graph``, keeping layers in fp32 until the budget holds.

    Returns the optimized graph, the per-pass records, the pipeline actually run (with its
    ``keep=`` option) and the report.
    """
    from tgraph.backends.reference import run_graph

    budget = check_budget(accuracy)
    say = progress or (lambda _msg: None)
    head_specs, tail_specs = split_pipeline(parse_pipeline(pipeline))
    head_graph, head_records = PassManager(format_pipeline(head_specs), progress=progress).run(
        graph
    )
    say("accuracy budget: fp32 reference outputs")
    want = [run_graph(head_graph, arrays) for arrays in samples]

    tried: dict[int, _Trial] = {}  # k most sensitive layers in fp32 -> its result

    def trial(order: Sequence[str], k: int) -> _Trial:
        if k not in tried:
            say(f"accuracy budget: trying with {k} layer(s) in fp32")
            tail = PassManager(format_pipeline(_with_keep(tail_specs, order[:k])))
            g, records = tail.run(head_graph)
            err, top1 = compare_outputs(g, [run_graph(g, a) for a in samples], want)
            tried[k] = _Trial(g, records, err, top1, _meets(budget, err, top1))
        return tried[k]

    best = trial((), 0)
    compress = tail_specs[0]  # the lossy pass the tail starts with
    converted = _converted(best.records, compress.name)
    order: list[str] = []
    sensitivity: dict[str, float] = {}
    kept_n = 0
    if not best.met:
        say("accuracy budget: measuring each layer's sensitivity")
        compressor = get_pass(compress.name)(**dict(compress.options))
        sensitivity = _layer_sensitivity(head_graph, set(converted), samples, compressor)
        order = sorted(converted, key=lambda n: -sensitivity.get(n, math.inf))
        kept_n, lo, hi = len(order), 1, len(order)
        while lo <= hi:  # the smallest k whose k most sensitive layers in fp32 meet the budget
            k = (lo + hi) // 2
            if trial(order, k).met:
                kept_n, hi = k, k - 1
            else:
                lo = k + 1
        best = trial(order, kept_n)  # all layers in fp32 when no k met it
    kept = order[:kept_n]
    text = format_pipeline(head_specs + _with_keep(tail_specs, kept))
    report = AccuracyReport(
        budget=budget,
        rel_error=best.rel_error,
        top1_agreement=best.top1,
        converted=[n for n in converted if n not in set(kept)],
        kept=kept,
        sensitivity={n: sensitivity[n] for n in order} if sensitivity else {},
        trials=[{"kept": k, "rel_error": t.rel_error, "top1": t.top1} for k, t in tried.items()],
        met=best.met,
    )
    return best.graph, head_records + best.records, text, report


def _converted(records: Sequence[PassRecord], pass_name: str) -> list[str]:
    for r in records:
        if r.name.split("{")[0] == pass_name:
            return list(r.stats.get("layers", []))
    return []
