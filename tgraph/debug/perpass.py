"""What each pass buys: latency with each fusion family switched off in turn
(``tgraph bench --per-pass``).

Variants of one pipeline are compiled for one backend: the whole pipeline, the pipeline
without each non-cleanup pass (every entry of that name is dropped: ``fuse-gelu`` is one
family however often it appears), and the pipeline with cleanup only. They run
interleaved by the bench's own timing loop (``tgraph.bench.time_interleaved``); a pass "bought"
the latency its removal costs: median without it minus median of the whole pipeline.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tgraph.bench.contenders import eager_call, tgraph_build
from tgraph.bench.measure import max_error, one_line, time_interleaved
from tgraph.passes.manager import PassSpec, format_pipeline, parse_pipeline

# Passes that clean up rather than fuse: they stay in every variant.
CLEANUP = ("simplify", "fold-constants", "cse", "dce")


@dataclass
class Variant:
    """One pipeline variant and its measurements (milliseconds)."""

    name: str  # "all", "without fuse-gelu", "cleanup only"
    pipeline: str
    removed: str | None = None  # the family switched off
    median_ms: float | None = None
    max_abs_error: float | None = None
    error: str | None = None
    times_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class PerPassReport:
    model: str
    backend: str
    threads: int
    repeats: int
    variants: list[Variant]

    def baseline(self) -> float | None:
        return self.variants[0].median_ms if self.variants else None

    def bought_ms(self, variant: Variant) -> float | None:
        """Latency the removed family bought: its absence costs this much."""
        base = self.baseline()
        if variant.removed is None or variant.median_ms is None or base is None:
            return None
        return variant.median_ms - base

    def to_json(self) -> dict[str, Any]:
        rows = []
        for v in self.variants:
            rows.append({
                "name": v.name, "pipeline": v.pipeline, "removed": v.removed,
                "median_ms": v.median_ms, "bought_ms": self.bought_ms(v),
                "max_abs_error": v.max_abs_error, "error": v.error,
            })  # fmt: skip
        return {"model": self.model, "backend": self.backend, "threads": self.threads,
                "repeats": self.repeats, "variants": rows}  # fmt: skip


def families(pipeline: str) -> list[str]:
    """The non-cleanup pass names of ``pipeline``, in first-seen order."""
    seen: dict[str, None] = {}
    for spec in parse_pipeline(pipeline):
        if spec.name not in CLEANUP:
            seen.setdefault(spec.name)
    return list(seen)


def variants(pipeline: str) -> list[Variant]:
    specs = parse_pipeline(pipeline)

    def without(names: set[str]) -> str:
        kept: list[PassSpec] = [s for s in specs if s.name not in names]
        return format_pipeline(kept) or "none"

    out = [Variant("all", format_pipeline(specs) or "none")]
    fams = families(pipeline)
    out += [Variant(f"without {f}", without({f}), removed=f) for f in fams]
    if fams:
        out.append(Variant("cleanup only", without(set(fams))))
    return out


def per_pass_bench(
    model: torch.nn.Module,
    inputs: Any,
    *,
    name: str = "model",
    backend: str = "ort",
    pipeline: str = "default",
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    pause_s: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> PerPassReport:
    """Compile every variant of ``pipeline`` for ``backend`` and time them interleaved."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    say = progress or (lambda _msg: None)
    runs: dict[str, Callable[[], Any]] = {}
    report = PerPassReport(name, backend, threads, repeats, variants(pipeline))
    by_name = {v.name: v for v in report.variants}
    with torch.no_grad():
        ref = eager_call(model, inputs)()
        for v in report.variants:
            say(f"compiling {v.name}")
            try:
                run = tgraph_build(model, inputs, backend, v.pipeline).run
                v.max_abs_error = max_error(run(), ref)
                runs[v.name] = run
            except Exception as e:  # noqa: BLE001 - a variant failing is a result
                v.error = one_line(e)
        say("timing")
        # The bench's own loop: random order per round, a pause and an untimed call before
        # each timed one, and a variant failing later is recorded, not fatal.
        time_interleaved(runs, by_name, warmup, repeats, pause_s=pause_s)
    for v in report.variants:
        if v.times_ms:
            v.median_ms = statistics.median(v.times_ms)
    return report


def format_report(report: PerPassReport) -> str:
    """A plain-text table: each variant's median, its ratio to the whole pipeline, and what
    the removed pass bought."""
    rows = [
        f"{report.model}  backend {report.backend}  threads {report.threads}  "
        f"repeats {report.repeats}",
        f"{'variant':<32}{'median ms':>11}{'x all':>8}{'bought ms':>11}{'share':>8}{'max err':>11}",
    ]
    base = report.baseline()
    total = sum(max(0.0, report.bought_ms(v) or 0.0) for v in report.variants)
    for v in report.variants:
        if v.error:
            rows.append(f"{v.name:<32}  failed: {v.error}")
            continue
        ratio = f"{v.median_ms / base:>8.2f}" if base else f"{'':>8}"
        bought = report.bought_ms(v)
        share = f"{100 * max(0.0, bought) / total:>7.0f}%" if bought is not None and total else ""
        rows.append(
            f"{v.name:<32}{v.median_ms:>11.3f}{ratio}"
            + (f"{bought:>11.3f}{share:>8}" if bought is not None else f"{'':>19}")
            + f"{v.max_abs_error:>11.2e}"
        )
    return "\n".join(rows)
