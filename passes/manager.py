"""Textual pipelines and the pass manager (the registries are in ``registry``).

A pass is a class registered with ``@register("kebab-name")`` whose ``run(graph)``
edits the graph in place and returns a :class:`PassResult`. The manager, not the
passes, owns observability: timing, node counts, ``verify()`` after every pass, a check
that ``changed`` agrees with the dump, per-pass dumps and diffs, and reproducers.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import pickle
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tgraph.ir import Graph, IRError
from tgraph.passes.registry import (  # noqa: F401  (re-exported: the passes import them here)
    PipelineError,
    get_pass,
    is_pass,
    list_passes,
    list_pipelines,
    lossy_passes,
    pipeline_text,
    register,
    register_pipeline,
    unknown_name,
)


@dataclass
class PassResult:
    """What a pass did: whether it changed the graph, and counters (matches per rule, ...)."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Base class of passes. Options arrive as keyword arguments to ``__init__``."""

    name: str = ""
    # A lossy pass (compression) changes outputs by design, within its stated tolerance;
    # tests and numeric verification compare it with that tolerance, not with 1e-4.
    lossy: bool = False

    def __init__(self, **options: Any):
        if options:
            raise PipelineError(f"pass {self.name} takes no options, got {sorted(options)}")

    def run(self, graph: Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def approximate_linear(self, x: Any, w: Any, hessian: Any = None) -> Any:
        """What this (lossy) pass makes of one ``linear`` layer: ``x @ w.T`` as its
        compressed form computes it, in NumPy (``hessian``: the layer's calibration
        statistics ``X^T X``, or None; passes that calibrate use it). Lossy passes take a ``keep`` option (layer
        patterns left in full precision) and list the layers they converted in
        ``stats["layers"]``; the accuracy budget ranks layers with this method and keeps
        the most sensitive ones."""
        raise NotImplementedError(f"pass {self.name} is not a lossy pass")

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class PassError(RuntimeError):
    """A pass failed (raised, broke the graph, or misreported ``changed``).

    ``reproducer`` is the directory written for it (with a dump dir), else None.
    """

    reproducer: str | None = None


class InstrumentError(Exception):
    """An instrument rejected a pass's result (numeric verification: ``tgraph.debug.numcheck``)."""


class PassInstrument:
    """Hooks the manager calls around every pass (TVM's pass instruments, in small).

    ``after_pass`` raises :class:`InstrumentError` to fail the pass; the manager turns it
    into a :class:`PassError` naming the pass (with a reproducer when it has a dump dir).
    Instrument time is not counted in the pass's ``seconds``.
    """

    def run_start(self, graph: Graph) -> None:
        """Called once with the pipeline's input graph (a clone the passes will edit)."""

    def before_pass(self, graph: Graph, spec: PassSpec, index: int) -> None:
        """Called just before pass number ``index`` (1-based) runs."""

    def after_pass(self, graph: Graph, spec: PassSpec, index: int, changed: bool) -> None:
        """Called after the pass ran and ``verify()`` passed."""


# -- pipelines -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassSpec:
    """One entry of a pipeline: a pass name and its options."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={_format_option(v)}" for k, v in self.options)
        return f"{self.name}{{{opts}}}"

    def create(self) -> Pass:
        cls = get_pass(self.name)
        try:
            return cls(**dict(self.options))
        except TypeError as e:
            raise PipelineError(
                f"pass {self.name}: bad options {dict(self.options)} ({e})"
            ) from None


def _format_option(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _parse_option(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_pipeline(pipeline: str | Sequence[str]) -> list[PassSpec]:
    """Parse ``"a,b{k=v},c"`` (or a list of entries); named pipelines expand in place.

    ``format_pipeline(parse_pipeline(text)) == text`` for text without named pipelines.
    """
    entries = _split_entries(pipeline) if isinstance(pipeline, str) else list(pipeline)
    if len(entries) == 1 and not entries[0].strip():
        return []  # "" is the empty pipeline (``none``)
    specs: list[PassSpec] = []
    for i, entry in enumerate(entries):
        entry = entry.strip()
        if not entry:
            raise PipelineError(
                f"pipeline {_shown(pipeline)}: entry {i + 1} is empty; remove the extra comma"
            )
        m = re.fullmatch(r"([a-z0-9-]+)(?:\{(.*)\})?", entry)
        if not m:
            raise PipelineError(f"malformed pipeline entry {entry!r}; want name or name{{k=v,...}}")
        name, opts = m.group(1), m.group(2)
        if pipeline_text(name) is None and not is_pass(name):
            raise PipelineError(unknown_name(name))
        options = []
        for item in filter(None, (opts or "").split(",")):
            if "=" not in item:
                raise PipelineError(f"pass {name}: option {item!r} is not key=value")
            k, v = item.split("=", 1)
            options.append((k.strip(), _parse_option(v.strip())))
        expansion = pipeline_text(name)
        if expansion is not None:  # a named pipeline; options reach the passes that take them
            specs.extend(_pipeline_with(name, parse_pipeline(expansion), options))
        else:
            specs.append(PassSpec(name, tuple(options)))
    return specs


def _pipeline_with(name: str, specs: list[PassSpec], options: list) -> list[PassSpec]:
    """A named pipeline's passes with ``name{k=v}`` options set on every pass that takes k."""
    for key, value in options:
        takes = [key in inspect.signature(get_pass(s.name).__init__).parameters for s in specs]
        if not any(takes):
            raise PipelineError(f"pipeline {name}: no pass in it takes the option {key!r}")
        specs = [
            PassSpec(s.name, (*[o for o in s.options if o[0] != key], (key, value))) if t else s
            for s, t in zip(specs, takes)
        ]
    return specs


def _shown(pipeline: str | Sequence[str]) -> str:
    return repr(pipeline if isinstance(pipeline, str) else ",".join(pipeline))


def _split_entries(text: str) -> list[str]:
    """Split on commas outside braces."""
    entries, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            entries.append(text[start:i])
            start = i + 1
    entries.append(text[start:])
    return entries


def format_pipeline(specs: Sequence[PassSpec]) -> str:
    return ",".join(str(s) for s in specs)


# -- running -------------------------------------------------------------------------------------


def diff(a: Graph | str, b: Graph | str, a_name: str = "a", b_name: str = "b") -> str:
    """Unified diff of two graphs' dumps (or two dump texts)."""
    ta = a.dump() if isinstance(a, Graph) else a
    tb = b.dump() if isinstance(b, Graph) else b
    return "".join(
        difflib.unified_diff(
            ta.splitlines(keepends=True), tb.splitlines(keepends=True), a_name, b_name
        )
    )


@dataclass
class PassRecord:
    """What the manager measured for one pass."""

    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool
    stats: dict[str, Any]
    ops: dict[str, int]
    # The graph's dump after the pass; kept only with ``keep_dumps=True`` (the HTML report
    # reads it). Not part of ``to_json``: summary.json stays small.
    dump: str | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 6),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "changed": self.changed,
            "stats": self.stats,
            "ops": self.ops,
        }


class PassManager:
    """Runs a pipeline over a graph with verification, dumps and reproducers.

    Args:
        pipeline: a pipeline string, a named pipeline, or a list of entries.
        verify: run ``graph.verify()`` after every pass.
        dump_dir: write ``00-input.txt``, ``NN-<pass>.txt``/``.diff`` and ``summary.json``.
        keep_dumps: keep each pass's dump text on its record (``PassRecord.dump``), for
            reports built in memory (``tgraph.debug.report``) rather than from a dump dir.
        progress: called with a short message before each pass (the CLI's status line).
        instruments: :class:`PassInstrument` objects called around every pass (numeric
            verification, ``tgraph.debug.numcheck``).
    """

    def __init__(
        self,
        pipeline: str | Sequence[str],
        verify: bool = True,
        dump_dir: str | None = None,
        keep_dumps: bool = False,
        progress: Callable[[str], None] | None = None,
        instruments: Sequence[PassInstrument] = (),
    ):
        self.specs = parse_pipeline(pipeline)
        self.instruments = list(instruments)
        self.verify = verify
        self.dump_dir = dump_dir
        self.keep_dumps = keep_dumps
        self.progress = progress

    @property
    def pipeline(self) -> str:
        return format_pipeline(self.specs)

    def run(self, graph: Graph) -> tuple[Graph, list[PassRecord]]:
        """Optimize a clone of ``graph``; the caller's graph is untouched."""
        graph = graph.clone()
        records: list[PassRecord] = []
        before = self._text(graph)
        self._write("00-input.txt", before)
        for instrument in self.instruments:
            instrument.run_start(graph)
        for index, spec in enumerate(self.specs, start=1):
            if self.progress:
                self.progress(f"pass {index}/{len(self.specs)}: {spec}")
            record, after = self._run_one(graph, spec, index, before, records)
            records.append(record)
            stem = f"{index:02d}-{spec.name}"
            self._write(f"{stem}.txt", after)
            self._write(f"{stem}.diff", diff(before, after, f"{index - 1:02d}", stem))
            before = after
        self._write_summary(records)
        return graph, records

    def _run_one(self, graph, spec, index, before, records):
        n_before = len(graph.nodes)
        snapshot = graph.clone() if self.dump_dir else None
        try:
            for instrument in self.instruments:
                instrument.before_pass(graph, spec, index)
        except InstrumentError as e:
            raise self._failure(spec, index, records, snapshot, e) from e
        start = time.perf_counter()
        try:
            result = spec.create().run(graph)
            if self.verify:
                graph.verify()
        except (PipelineError, PassError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure in a pass is reported with context
            raise self._failure(spec, index, records, snapshot, e) from e
        seconds = time.perf_counter() - start
        after = self._text(graph)
        if result.changed != (after != before):
            what = "changed" if after != before else "did not change"
            e = PassError(f"reported changed={result.changed} but the graph {what}")
            raise self._failure(spec, index, records, snapshot, e)
        try:
            for instrument in self.instruments:
                instrument.after_pass(graph, spec, index, result.changed)
        except InstrumentError as e:
            raise self._failure(spec, index, records, snapshot, e) from e
        record = PassRecord(
            str(spec), seconds, n_before, len(graph.nodes), result.changed, result.stats,
            graph.op_histogram(), after if self.keep_dumps else None,
        )  # fmt: skip
        return record, after

    def _failure(self, spec, index, records, snapshot, error) -> PassError:
        done = ", ".join(r.name for r in records) or "none"
        where = ""
        if self.dump_dir and snapshot is not None:
            repro = os.path.join(self.dump_dir, f"failed-{index:02d}-{spec.name}")
            write_reproducer(repro, snapshot, str(spec))
            where = f"; reproducer in {repro}"
        kind = "failed"
        if isinstance(error, IRError):
            kind = "broke the graph"
        elif isinstance(error, InstrumentError):
            kind = "failed verification"
        failure = PassError(f"pass {spec} {kind}: {error} (after passes: {done}){where}")
        if where:
            failure.reproducer = where[len("; reproducer in ") :]
        return failure

    def _text(self, graph: Graph) -> str:
        """The graph's dump; constants by identity unless the text is written or kept."""
        return graph.dump(contents=self.dump_dir is not None or self.keep_dumps)

    def _write(self, name: str, text: str) -> None:
        if self.dump_dir is None:
            return
        os.makedirs(self.dump_dir, exist_ok=True)
        with open(os.path.join(self.dump_dir, name), "w") as f:
            f.write(text)

    def _write_summary(self, records: list[PassRecord]) -> None:
        summary = {
            "pipeline": self.pipeline,
            "passes": [r.to_json() for r in records],
            "why_not_fused": why_not_fused(records),
        }
        self._write("summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def why_not_fused(records: Sequence[PassRecord]) -> list[dict[str, Any]]:
    """Per rewrite rule of every pass that ran: how many sites it fused and every candidate
    site it rejected, with the first check that failed (the "why not fused" report).

    Entries follow the pipeline order; a rule that neither fused nor rejected anything is
    left out. Each entry: ``{"pass": "05 fuse-linear", "rule", "fused", "rejected": [{"node",
    "module", "reason"}]}``.
    """
    out = []
    for index, r in enumerate(records, start=1):
        matches = r.stats.get("matches")
        if not isinstance(matches, dict):
            continue  # not a rewrite pass
        rejected: dict[str, list[dict[str, str]]] = {}
        for rej in r.stats.get("rejected", ()):
            site = {k: rej.get(k, "") for k in ("node", "module", "reason")}
            rejected.setdefault(rej["rule"], []).append(site)
        for rule in [*matches, *(k for k in rejected if k not in matches)]:
            fused, sites = int(matches.get(rule, 0)), rejected.get(rule, [])
            if fused or sites:
                entry = {"pass": f"{index:02d} {r.name}", "rule": rule, "fused": fused}
                out.append({**entry, "rejected": sites})
    return out


def write_reproducer(directory: str, graph: Graph, pipeline: str) -> None:
    """The graph before a failing pass plus the one-pass pipeline that reproduces it."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "graph.pkl"), "wb") as f:
        pickle.dump(graph, f)
    with open(os.path.join(directory, "before.txt"), "w") as f:
        f.write(graph.dump())
    with open(os.path.join(directory, "pipeline.txt"), "w") as f:
        f.write(pipeline + "\n")


def replay(directory: str) -> tuple[Graph, list[PassRecord]]:
    """Run a reproducer written by a failed pipeline again (raises the same failure)."""
    with open(os.path.join(directory, "graph.pkl"), "rb") as f:
        graph = pickle.load(f)
    with open(os.path.join(directory, "pipeline.txt")) as f:
        pipeline = f.read().strip()
    return PassManager(pipeline).run(graph)


def optimize(
    graph: Graph,
    pipeline: str | Sequence[str] = "default",
    *,
    verify: bool = True,
    dump_dir: str | None = None,
    keep_dumps: bool = False,
    instruments: Sequence[PassInstrument] = (),
) -> tuple[Graph, list[PassRecord]]:
    """Run ``pipeline`` on a clone of ``graph``; returns the new graph and per-pass records.

    ``keep_dumps=True`` keeps each pass's dump on its record (see :class:`PassManager`);
    ``instruments`` run around every pass (see :class:`PassInstrument`).
    """
    manager = PassManager(
        pipeline, verify=verify, dump_dir=dump_dir, keep_dumps=keep_dumps, instruments=instruments
    )
    return manager.run(graph)
