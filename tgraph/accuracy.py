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

The measures that trained models need (docs/compression.md): ``min_cosine`` (the mean
cosine similarity of each output row, over the last dim, to fp32: sentence embeddings,
hidden states; rows of padding, where an ``attention_mask`` input is 0, do not count) and ``max_ppl_increase`` (a relative perplexity change: for a language model
traced with integer token ids (B, T) and logits (B, T, V), the perplexity of the ids' own
next tokens, ``exp(mean -log p(ids[:, t+1] | logits[:, t]))``, may grow at most this much).
Any of the four keys may be given; the budget holds when all given ones hold. Every lossy
pass of the tail (``int4``: int4 linears, then the int8 LM head and embedding) converts
candidates, and each layer's sensitivity comes from the pass that converted it.
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

_BUDGET_KEYS = {"max_rel_error", "min_top1", "min_cosine", "max_ppl_increase"}


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
    cosine: dict[str, float] = field(default_factory=dict)  # output -> mean row cosine
    ppl_increase: float | None = None  # relative perplexity change (language models)

    def summary(self) -> str:
        top1 = ", ".join(f"{k} {v:.1%}" for k, v in self.top1_agreement.items())
        kept = ", ".join(self.kept) if self.kept else "none"
        verdict = "met" if self.met else "NOT met"
        cos = ", ".join(f"{k} {v:.5f}" for k, v in self.cosine.items())
        return (
            f"accuracy budget {self.budget} {verdict}: rel error {self.rel_error:.3g}"
            + (f", top-1 agreement {top1}" if top1 else "")
            + (f", cosine {cos}" if cos else "")
            + (f", perplexity {self.ppl_increase:+.2%}" if self.ppl_increase is not None else "")
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
            "cosine": self.cosine,
            "ppl_increase": self.ppl_increase,
        }


def check_budget(accuracy: dict[str, Any]) -> dict[str, float]:
    """The budget with its keys checked (at least one of :data:`_BUDGET_KEYS`)."""
    if not isinstance(accuracy, dict) or not set(accuracy) & _BUDGET_KEYS:
        raise AccuracyError(
            'accuracy must be a dict like {"max_rel_error": 1e-2} (or min_top1, min_cosine, '
            "max_ppl_increase)"
        )
    unknown = sorted(set(accuracy) - _BUDGET_KEYS)
    if unknown:
        raise AccuracyError(f"unknown accuracy key(s) {unknown}; known: {sorted(_BUDGET_KEYS)}")
    budget = {k: float(v) for k, v in accuracy.items()}
    if not budget.get("max_rel_error", 1.0) > 0:
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


class Measures(NamedTuple):
    """What a compressed graph's outputs measure against fp32 (see the module docstring)."""

    rel_error: float
    top1: dict[str, float]
    cosine: dict[str, float]
    ppl_increase: float | None


def _nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of ``ids[:, 1:]`` under ``logits[:, :-1]``."""
    z = logits[:, :-1].astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(logp, ids[:, 1:, None].astype(np.int64), axis=-1)
    return float(-picked.mean())


def _token_ids(graph: Graph, arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    for v, a in zip(graph.inputs, arrays):
        if v.dtype.is_int and a.ndim == 2 and a.shape[1] > 1:
            return a
    return None


def _padding_mask(graph: Graph, arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """The (B, T) rows that are real tokens: a graph input named ``attention_mask``."""
    for v, a in zip(graph.inputs, arrays):
        if v.name == "attention_mask" and a.ndim == 2:
            return np.asarray(a) != 0
    return None


def _rows(out: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The output's rows (last dim) at real tokens when ``mask`` matches its (B, T)."""
    if mask is not None and out.ndim == 3 and out.shape[:2] == mask.shape and mask.any():
        return out[mask]
    return out


def compare_outputs(
    graph: Graph,
    got: Sequence[Sequence[np.ndarray]],
    want: Sequence[Sequence[np.ndarray]],
    inputs: Sequence[Sequence[np.ndarray]] = (),
) -> Measures:
    """Largest relative L2 error, top-1 agreement, mean row cosine and perplexity change.

    With ``inputs`` (the samples), top-1 and cosine count only the rows of real tokens when
    the model takes an ``attention_mask`` (padding rows carry no meaning), and perplexity is
    measured on every (B, T, V) output whose V exceeds every token id of the (B, T) integer
    input (logits over the vocabulary).
    """
    worst = 0.0
    agree: dict[str, list[float]] = {}
    cosine: dict[str, list[float]] = {}
    nll_got, nll_want = [], []
    for i, (g_out, w_out) in enumerate(zip(got, want)):
        ids = _token_ids(graph, inputs[i]) if i < len(inputs) else None
        mask = _padding_mask(graph, inputs[i]) if i < len(inputs) else None
        for v, g_all, w_all in zip(graph.outputs, g_out, w_out):
            if not v.dtype.is_float or g_all.size == 0:
                continue
            worst = max(worst, _rel_error(g_all, w_all))
            g, w = _rows(g_all, mask), _rows(w_all, mask)
            if g.ndim >= 2 and g.shape[-1] > 1:
                same = np.argmax(g, axis=-1) == np.argmax(w, axis=-1)
                agree.setdefault(v.name, []).append(float(same.mean()))
                g64, w64 = g.astype(np.float64), w.astype(np.float64)
                dots = (g64 * w64).sum(-1)
                norms = np.linalg.norm(g64, axis=-1) * np.linalg.norm(w64, axis=-1)
                cos = np.where(norms > 0, dots / np.maximum(norms, 1e-300), 1.0)
                cosine.setdefault(v.name, []).append(float(cos.mean()))
            if (
                ids is not None
                and g_all.ndim == 3
                and g_all.shape[:2] == ids.shape
                and 0 <= ids.min()
                and ids.max() < g_all.shape[-1]
            ):
                nll_got.append(_nll(g_all, ids))
                nll_want.append(_nll(w_all, ids))
    ppl = math.exp(np.mean(nll_got) - np.mean(nll_want)) - 1 if nll_got else None
    return Measures(
        worst,
        {k: float(np.mean(v)) for k, v in agree.items()},
        {k: float(np.mean(v)) for k, v in cosine.items()},
        ppl,
    )


def _owners(specs: Sequence[PassSpec], records: Sequence[PassRecord]) -> dict[str, PassSpec]:
    """Layer or table -> the lossy pass (with its options) that converted it."""
    ran = [r for r in records if get_pass(r.name.split("{")[0]).lossy]
    owner: dict[str, PassSpec] = {}
    for spec, record in zip([s for s in specs if _lossy(s)], ran):
        for name in [*record.stats.get("layers", []), *record.stats.get("embedding", [])]:
            owner.setdefault(name, spec)
    return owner


def _layer_sensitivity(
    head: Graph, layers: set[str], samples: Sequence[Sequence[np.ndarray]],
    specs: Sequence[PassSpec], records: Sequence[PassRecord],
) -> dict[str, float]:  # fmt: skip
    """Relative error of each layer's output when only that layer is compressed, as the
    pass that converted it computes it (``approximate_linear``); for an embedding table,
    the relative error of its int8 table."""
    from tgraph.backends.reference import run_graph
    from tgraph.passes.quantize import CALIBRATION, layer_name, quantize_int8

    hessians = head.meta.get(CALIBRATION) or {}
    owner = _owners(specs, records)
    compressors: dict[PassSpec, Pass] = {}
    sites, errors = [], {}
    for node in head.nodes:
        w = node.inputs[1] if len(node.inputs) >= 2 else None
        if node.op == "linear" and w is not None and w.const is not None:
            if layer_name(w) in layers:
                sites.append((layer_name(w), node))
        elif node.op == "gather" and node.inputs[0].const is not None:
            name = layer_name(node.inputs[0])
            if name in layers:
                table = np.asarray(node.inputs[0].const, np.float32)
                q, scale = quantize_int8(table)
                errors[name] = _rel_error(q * scale[:, None], table)
    wanted = sorted({n.inputs[0].name for _, n in sites})
    for arrays in samples:
        _, kept = run_graph(head, arrays, keep=wanted)
        kept.update({v.name: a for v, a in zip(head.inputs, arrays)})
        for name, node in sites:
            spec = owner[name]
            if spec not in compressors:
                compressors[spec] = get_pass(spec.name)(**dict(spec.options))
            x = kept[node.inputs[0].name]
            w = np.asarray(node.inputs[1].const, dtype=np.float32)
            b = None if len(node.inputs) < 3 or node.inputs[2] is None else node.inputs[2].const
            exact = np.matmul(x.astype(np.float64), w.T.astype(np.float64))
            approx = compressors[spec].approximate_linear(x, w, hessians.get(name))
            if b is not None:
                exact, approx = exact + b, approx + b
            errors[name] = max(errors.get(name, 0.0), _rel_error(approx, exact))
    return errors


# -- the search ------------------------------------------------------------------------------------


class _Trial(NamedTuple):
    graph: Graph
    records: list[PassRecord]
    measures: Measures
    met: bool


def _meets(budget: dict[str, float], m: Measures) -> bool:
    ok = m.rel_error <= budget.get("max_rel_error", math.inf)
    if "min_top1" in budget and m.top1:
        ok = ok and min(m.top1.values()) >= budget["min_top1"]
    if "min_cosine" in budget and m.cosine:
        ok = ok and min(m.cosine.values()) >= budget["min_cosine"]
    if "max_ppl_increase" in budget and m.ppl_increase is not None:
        ok = ok and m.ppl_increase <= budget["max_ppl_increase"]
    return ok


def fit_budget(
    graph: Graph,
    pipeline: str | Sequence[str],
    accuracy: dict[str, Any],
    samples: Sequence[Sequence[np.ndarray]],
    progress: Callable[[str], None] | None = None,
    calibrator: Any = None,
) -> tuple[Graph, list[PassRecord], str, AccuracyReport]:
    """Run ``pipeline`` over ``graph``, keeping layers in fp32 until the budget holds.

    ``calibrator`` (a :class:`tgraph.calibration.Calibrator`): its statistics, collected on
    the fp32 head graph, go to every trial's compression passes and to the sensitivities,
    so each layer is ranked as the calibrated pass compresses it. Returns the optimized graph, the per-pass records, the pipeline actually run (with its
    ``keep=`` option) and the report.
    """
    from tgraph.backends.reference import run_graph

    budget = check_budget(accuracy)
    say = progress or (lambda _msg: None)
    head_specs, tail_specs = split_pipeline(parse_pipeline(pipeline))
    head_graph, head_records = PassManager(format_pipeline(head_specs), progress=progress).run(
        graph
    )
    if calibrator is not None:
        from tgraph.passes.quantize import CALIBRATION

        say("accuracy budget: calibration statistics")
        head_graph.meta[CALIBRATION] = calibrator.statistics(head_graph)
    say("accuracy budget: fp32 reference outputs")
    want = [run_graph(head_graph, arrays) for arrays in samples]

    tried: dict[int, _Trial] = {}  # k most sensitive layers in fp32 -> its result

    def trial(order: Sequence[str], k: int) -> _Trial:
        if k not in tried:
            say(f"accuracy budget: trying with {k} layer(s) in fp32")
            tail = PassManager(format_pipeline(_with_keep(tail_specs, order[:k])))
            g, records = tail.run(head_graph)
            measures = compare_outputs(g, [run_graph(g, a) for a in samples], want, samples)
            tried[k] = _Trial(g, records, measures, _meets(budget, measures))
        return tried[k]

    best = trial((), 0)
    converted = _converted(best.records)
    order: list[str] = []
    sensitivity: dict[str, float] = {}
    kept_n = 0
    if not best.met:
        say("accuracy budget: measuring each layer's sensitivity")
        sensitivity = _layer_sensitivity(
            head_graph, set(converted), samples, tail_specs, best.records
        )
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
        rel_error=best.measures.rel_error,
        top1_agreement=best.measures.top1,
        converted=[n for n in converted if n not in set(kept)],
        kept=kept,
        sensitivity={n: sensitivity[n] for n in order} if sensitivity else {},
        trials=[{"kept": k, **t.measures._asdict()} for k, t in tried.items()],
        met=best.met,
        cosine=best.measures.cosine,
        ppl_increase=best.measures.ppl_increase,
    )
    return best.graph, head_records + best.records, text, report


def _converted(records: Sequence[PassRecord]) -> list[str]:
    """Every layer (and embedding table) the tail's lossy passes converted."""
    out: list[str] = []
    for r in records:
        if get_pass(r.name.split("{")[0]).lossy:
            out += [*r.stats.get("layers", []), *r.stats.get("embedding", [])]
    return out
