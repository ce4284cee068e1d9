"""Accuracy bisection: find the pass, and the rewrite inside it, that breaks a model's outputs.

``tgraph bisect CHECKPOINT --pipeline P --backend B`` (and :func:`bisect` here):

1. The oracle is the reference interpreter on the unoptimized graph, at the verify sizes
   (:func:`tgraph.debug.numcheck.verify_sizes`) with seeded random inputs.
2. The pipeline runs once, keeping the graph after every pass. A probe lowers one of
   these graphs with backend B, runs it and compares with the oracle (``--tol``). The
   unoptimized graph must pass (else the backend, not a pass, is wrong) and the final one
   fail; a binary search finds the first pass whose graph fails.
3. When that pass is a rewrite pass, a second binary search over its ``max_matches``
   option finds the first rewrite that breaks the outputs, and the engine's record of
   that rewrite names the rule, the node and the module it came from.
4. A reproducer directory holds the graph before the culprit pass (``graph.pkl``,
   ``before.txt``), the one-pass pipeline (``pipeline.txt``, e.g.
   ``fuse-gelu{max_matches=7}``), the failing inputs and the oracle's outputs
   (``inputs.npz``, ``expected.npz``) and ``bisect.json``. ``tgraph replay DIR``
   (:func:`replay`) runs it again.

Binary search assumes a pass that breaks the outputs is not undone by a later one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tgraph.debug.numcheck import close, verify_sizes
from tgraph.ir import Graph
from tgraph.passes.manager import PassError, PassSpec, parse_pipeline, write_reproducer

DEFAULT_TOL = 1e-4


@dataclass
class BisectResult:
    """What :func:`bisect` found. ``pass_index`` is 1-based; None when nothing drifts or the
    unoptimized graph already differs (``verdict`` says which)."""

    pipeline: str
    backend: str
    tol: float
    verdict: str  # "found", "clean" or "backend"
    pass_index: int | None = None
    pass_name: str | None = None
    match: int | None = None
    site: dict[str, str] = field(default_factory=dict)
    max_error: float = 0.0
    where: str = ""
    probes: int = 0
    seconds: float = 0.0
    reproducer: str | None = None

    def summary(self) -> str:
        """One line: "pass fuse-gelu (6 of 12), match 7 (rule ...), at node %x (from module m)"."""
        if self.verdict == "clean":
            return (f"no pass changes the outputs on backend {self.backend} beyond tol "
                    f"{self.tol:g}")  # fmt: skip
        if self.verdict == "backend":
            return (f"the unoptimized graph already differs on backend {self.backend} "
                    f"(max abs {self.max_error:.3g} at {self.where}): a backend bug, not a pass")  # fmt: skip
        n = len(parse_pipeline(self.pipeline))
        text = f"pass {self.pass_name} ({self.pass_index} of {n})"
        if self.match is not None:
            text += f", match {self.match}"
            if self.site.get("rule"):
                text += f" (rule {self.site['rule']})"
            text += f", at node %{self.site.get('node', '?')}"
            if self.site.get("module"):
                text += f" (from module {self.site['module']})"
            if self.site.get("source"):
                text += f" at {self.site['source']}"
        return f"{text}: max abs error {self.max_error:.3g} at {self.where}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Probe:
    ok: bool
    error: float = 0.0
    where: str = ""
    case: int = 0


class _Oracle:
    """Inputs at every size and the reference outputs of the unoptimized graph."""

    def __init__(self, graph: Graph, traced: Mapping[str, int] | None, seed: int):
        from tgraph.backends.reference import random_inputs, run_graph

        self.sizes = verify_sizes(graph, traced)
        self.seed = seed
        self.inputs = [random_inputs(graph, b, seed=seed) for b in self.sizes]
        self.expected = [run_graph(graph, x) for x in self.inputs]

    def describe(self, case: int) -> str:
        sizes = ",".join(f"{k}={v}" for k, v in self.sizes[case].items()) or "static shapes"
        return f"{sizes} seed {self.seed}"


def run_backend(
    graph: Graph, backend: str, inputs: Sequence[np.ndarray], params: Mapping[str, Any] | None
) -> list[np.ndarray]:
    """Lower ``graph`` with ``backend`` ("reference", "ort", "torch") on CPU and run it."""
    if backend == "reference":
        from tgraph.backends.reference import run_graph

        return run_graph(graph, inputs)
    import torch

    from tgraph.backends import get_backend
    from tgraph.tensors import to_numpy, to_torch

    runner = get_backend(backend).lower(graph, "cpu", params=params)
    with torch.no_grad():
        outs = runner([to_torch(np.array(a)) for a in inputs])
    return [to_numpy(t) for t in outs]


def _with_max_matches(spec: PassSpec, n: int) -> PassSpec:
    options = tuple((k, v) for k, v in spec.options if k != "max_matches")
    return PassSpec(spec.name, (*options, ("max_matches", n)))


def _is_rewrite(spec: PassSpec) -> bool:
    from tgraph.passes.rewrite import RewritePass

    return isinstance(spec.create(), RewritePass)


def _run_pass(graph: Graph, spec: PassSpec, index: int) -> tuple[Graph, Any]:
    """A clone of ``graph`` after ``spec``, and the pass object (for ``applied``)."""
    out = graph.clone()
    instance = spec.create()
    try:
        instance.run(out)
        out.verify()
    except Exception as e:  # noqa: BLE001 - a crash is not what bisect looks for: say so
        raise PassError(f"pass {spec} (number {index}) failed while bisecting: {e}") from e
    return out, instance


def bisect_model(
    model: Any,
    example_inputs: Any,
    pipeline: str | Sequence[str],
    **options: Any,
) -> BisectResult:
    """Trace ``model`` on ``example_inputs`` and :func:`bisect` ``pipeline`` on its graph,
    checking at the traced sizes and others, with the model's own parameters for the torch
    backend. ``options`` are :func:`bisect`'s (backend, tol, seed, out_dir, progress)."""
    import tgraph
    from tgraph.api import flatten_call, model_tensors
    from tgraph.debug.numcheck import traced_bindings
    from tgraph.frontend import normalize_inputs

    graph = tgraph.trace(model, example_inputs)
    args, kwargs = normalize_inputs(example_inputs)
    tensors = flatten_call(graph, args, kwargs)
    traced = traced_bindings(graph, [tuple(t.shape) for t in tensors])
    params = model_tensors(model) if hasattr(model, "named_parameters") else None
    return bisect(graph, pipeline, params=params, traced=traced, **options)


def bisect(
    graph: Graph,
    pipeline: str | Sequence[str],
    *,
    backend: str = "reference",
    tol: float = DEFAULT_TOL,
    params: Mapping[str, Any] | None = None,
    traced: Mapping[str, int] | None = None,
    seed: int = 0,
    out_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BisectResult:
    """Find the first pass of ``pipeline`` (and the first rewrite inside it) after which
    ``backend``'s outputs differ from the reference outputs of ``graph``.

    Args:
        graph: the unoptimized graph (left untouched).
        pipeline: the pipeline to bisect.
        backend: "reference", "ort" or "torch" (run on CPU).
        tol: rtol and atol of the comparison.
        params: the model's parameters by full name, for the torch backend.
        traced: symbol values of the traced inputs (see ``numcheck.verify_sizes``).
        seed: input seed.
        out_dir: write the reproducer here when a culprit is found.
        progress: called with a short message per step.

    Returns:
        A :class:`BisectResult`; ``summary()`` is the one-line answer.
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    specs = parse_pipeline(pipeline)
    text = ",".join(str(s) for s in specs)
    result = BisectResult(text, backend, tol, "clean")
    oracle = _Oracle(graph, traced, seed)

    def probe(g: Graph) -> _Probe:
        result.probes += 1
        for case, (inputs, want) in enumerate(zip(oracle.inputs, oracle.expected)):
            got = run_backend(g, backend, inputs, params)
            for a, b in zip(got, want):
                ok, err = close(a, b, tol, tol)
                if not ok:
                    return _Probe(False, err, oracle.describe(case), case)
        return _Probe(True)

    states = [graph.clone()]
    for index, spec in enumerate(specs, start=1):
        say(f"running pass {index}/{len(specs)}: {spec}")
        states.append(_run_pass(states[-1], spec, index)[0])
    say("probing the unoptimized and the final graph")
    first = probe(states[0])
    if not first.ok:
        result.verdict, result.max_error, result.where = "backend", first.error, first.where
        result.seconds = time.perf_counter() - start
        return result
    last = probe(states[-1])
    if last.ok:
        result.seconds = time.perf_counter() - start
        return result
    good, bad, bad_probe = 0, len(specs), last
    while bad - good > 1:
        mid = (good + bad) // 2
        say(f"probing after pass {mid}: {specs[mid - 1]}")
        p = probe(states[mid])
        if p.ok:
            good = mid
        else:
            bad, bad_probe = mid, p
    spec = specs[bad - 1]
    result.verdict, result.pass_index, result.pass_name = "found", bad, str(spec)
    result.max_error, result.where = bad_probe.error, bad_probe.where
    culprit = spec
    if _is_rewrite(spec):
        culprit = _bisect_matches(states[bad - 1], spec, bad, probe, result, say)
    if out_dir:
        result.reproducer = out_dir
        _write(out_dir, states[bad - 1], culprit, oracle, bad_probe.case, result)
    result.seconds = time.perf_counter() - start
    return result


def _bisect_matches(before: Graph, spec: PassSpec, index: int, probe, result, say) -> PassSpec:
    """Binary search over the pass's ``max_matches``; fills in result.match and site."""
    _, full = _run_pass(before, spec, index)
    total = len(full.applied)
    good, bad = 0, total
    bad_probe: _Probe | None = None
    while bad - good > 1:
        mid = (good + bad) // 2
        say(f"probing {spec} after {mid} of {total} rewrites")
        p = probe(_run_pass(before, _with_max_matches(spec, mid), index)[0])
        if p.ok:
            good = mid
        else:
            bad, bad_probe = mid, p
    if total == 0:
        return spec
    culprit = _with_max_matches(spec, bad)
    _, instance = _run_pass(before, culprit, index)
    result.match = bad
    result.site = dict(instance.applied[bad - 1])
    if bad_probe is not None:
        result.max_error, result.where = bad_probe.error, bad_probe.where
    return culprit


def _write(directory: str, before: Graph, culprit: PassSpec, oracle, case: int, result) -> None:
    write_reproducer(directory, before, str(culprit))
    names = [v.name for v in before.inputs]
    np.savez(os.path.join(directory, "inputs.npz"), **dict(zip(names, oracle.inputs[case])))
    outs = [f"output_{i}" for i in range(len(oracle.expected[case]))]
    np.savez(os.path.join(directory, "expected.npz"), **dict(zip(outs, oracle.expected[case])))
    info = {**result.to_json(), "seed": oracle.seed, "sizes": oracle.sizes[case]}
    info["summary"] = result.summary()
    with open(os.path.join(directory, "bisect.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


@dataclass
class ReplayResult:
    """A replayed reproducer: the one-pass pipeline and whether its outputs still drift."""

    pipeline: str
    backend: str
    ok: bool
    max_error: float

    def summary(self) -> str:
        state = "keeps the outputs" if self.ok else "still changes the outputs"
        return (f"{self.pipeline} {state} on backend {self.backend} "
                f"(max abs error {self.max_error:.3g})")  # fmt: skip


def replay(directory: str, backend: str | None = None) -> ReplayResult:
    """Run a bisect reproducer again: its one pass on its graph, outputs on its inputs.

    Raises:
        FileNotFoundError: ``directory`` is not a bisect reproducer.
    """
    from tgraph.passes.manager import replay as replay_pipeline

    info_path = os.path.join(directory, "bisect.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(
            f"{directory}: no bisect.json; give a directory written by tgraph bisect"
        )
    with open(info_path) as f:
        info = json.load(f)
    backend = backend or info["backend"]
    graph, _ = replay_pipeline(directory)
    with np.load(os.path.join(directory, "inputs.npz")) as data:
        inputs = [data[v.name] for v in graph.inputs]
    with np.load(os.path.join(directory, "expected.npz")) as data:
        expected = [data[f"output_{i}"] for i in range(len(data.files))]
    got = run_backend(graph, backend, inputs, None)
    worst, ok = 0.0, True
    for a, b in zip(got, expected):
        same, err = close(a, b, info["tol"], info["tol"])
        ok, worst = ok and same, max(worst, err)
    with open(os.path.join(directory, "pipeline.txt")) as f:
        pipeline = f.read().strip()
    return ReplayResult(pipeline, backend, ok, worst)
