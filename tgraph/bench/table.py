"""The bench report as a table: rows for rich (the CLI) or plain text, and the notes."""

from __future__ import annotations

import os

from tgraph.bench.results import BenchReport, BenchResult

COLUMNS = ("contender", "median ms", "iqr", "x eager", "max err", "build s", "peak MiB")


def table_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """One row of :data:`COLUMNS` per contender (a failed one: name, "failed", reason)."""
    rows = []
    for r in report.results:
        if r.error:
            skipped = r.error.startswith("skipped: ")
            reason = r.error.removeprefix("skipped: ")
            rows.append((r.name, "skipped" if skipped else "failed", reason))
            continue
        build = f"{r.build_s:.2f}"
        if r.stages_s:
            build += " (" + " + ".join(f"{k} {v:.1f}" for k, v in r.stages_s.items()) + ")"
        rows.append((
            r.name, f"{r.median_ms:.3f}", f"{r.iqr_ms:.3f}", f"{r.ratio_to_eager:.2f}",
            f"{r.max_abs_error:.1e}", build, _memory_cell(report, r),
        ))  # fmt: skip
    return rows


def _memory_cell(report: BenchReport, r: BenchResult) -> str:
    peak = r.cuda_peak_mb if report.device == "cuda" else r.rss_peak_mb
    return "" if peak is None else f"{peak:.0f}"


def notes(report: BenchReport) -> list[str]:
    lines = _device_notes(report)
    lines += [f"{r.name}: {r.note}" for r in report.results if r.note and not r.error]
    if report.load_avg:
        before, after = report.load_avg
        lines.append(f"load average {before:.2f} before, {after:.2f} after "
                     f"({os.cpu_count()} CPUs): a loaded machine widens the spread")  # fmt: skip
    return lines


def _device_notes(report: BenchReport) -> list[str]:
    """For CUDA or low-precision runs: what the errors and memory column mean, and who is
    over the dtype's tolerance."""
    if report.device == "cpu" and report.dtype == "fp32":
        return []
    where = f"{report.device} ({report.gpu})" if report.gpu else report.device
    lines = [
        f"{where}, model in {report.dtype}: max err is against eager fp32; tolerance "
        f"{report.tolerance:g} of the largest |output|"
        + ("; peak MiB is GPU memory" if report.device == "cuda" else "")
    ]
    for r in report.results:
        if r.rel_error is not None and not r.error and r.rel_error > report.tolerance:
            lines.append(f"{r.name}: relative error {r.rel_error:.1e} is over the tolerance")
    return lines


def format_table(report: BenchReport) -> str:
    """A plain-text table (the CLI renders it with rich on a terminal)."""
    head = f"{report.model}  batch {report.batch}  seq {report.seq_len}  threads {report.threads}"
    lines = [head, f"{'contender':<20}{'median ms':>11}{'iqr':>9}{'x eager':>9}{'max err':>10}"
                   f"{'peak MiB':>10}  build s"]  # fmt: skip
    for row in table_rows(report):
        if row[1] in ("failed", "skipped"):
            lines.append(f"{row[0]:<20}  {row[1]}: {row[2]}")
            continue
        name, med, iqr, ratio, err, build, peak = row
        lines.append(f"{name:<20}{med:>11}{iqr:>9}{ratio:>9}{err:>10}{peak:>10}  {build}")
    lines += notes(report)
    return "\n".join(lines)
