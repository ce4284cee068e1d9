"""Tables of the generation benchmark: one per report, and a markdown summary."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tgraph.bench.generation import GenReport


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(report: GenReport) -> str:
    """A plain-text table: one row per contender, then what the columns mean."""
    bw = (f"read bandwidth {report.membw_gbs:.1f} GB/s (spread {report.membw_spread_gbs:.1f})"
          if report.membw_gbs else "read bandwidth not measured")  # fmt: skip
    lines = [
        f"{report.model}  batch {report.batch}  prompt {report.prompt_len}  new tokens "
        f"{report.new_tokens}  threads {report.threads}  rounds {report.rounds}"
        + (f" x {report.processes} processes each" if report.processes > 1 else "")
        + f"  {bw}",
        f"fp32 bytes per decode step {report.bytes_per_step / 1e6:.1f} MB (weights "
        f"{report.weight_bytes / 1e6:.1f} + KV) -> bound "
        + (f"{report.bound_tok_s:.1f} tok/s" if report.bound_tok_s else "unknown"),
        f"{'contender':<17}{'prefill ms':>11}{'spread':>8}{'decode tok/s':>13}{'spread':>8}"
        f"{'% bound':>8}{'eff GB/s':>9}{'MB/step':>8}{'agree':>10}{'peak MiB':>9}{'load s':>8}",
    ]
    total = report.batch * report.new_tokens
    for r in report.results:
        if r.error:
            lines.append(f"{r.name:<17}  {r.error}")
            continue
        agree = f"{r.agree}/{total}" if r.agree is not None else ""
        lines.append(
            f"{r.name:<17}{_fmt(r.prefill_ms, '.1f'):>11}{_fmt(r.prefill_spread_ms, '.1f'):>8}"
            f"{_fmt(r.decode_tok_s, '.1f'):>13}{_fmt(r.decode_spread_tok_s, '.1f'):>8}"
            f"{_fmt(r.pct_of_bound, '.0f'):>8}{_fmt(r.effective_gbs, '.1f'):>9}"
            f"{_fmt(r.bytes_per_step and r.bytes_per_step / 1e6, '.0f'):>8}{agree:>10}"
            f"{_fmt(r.rss_peak_mb, '.0f'):>9}{_fmt(r.load_s, '.1f'):>8}"
        )
    lines += notes(report)
    return "\n".join(lines)


def notes(report: GenReport) -> list[str]:
    lines = []
    for r in report.results:
        if r.error:
            continue
        if r.first_mismatch is not None:
            lines.append(f"{r.name}: greedy tokens differ from eager's from step "
                         f"{r.first_mismatch} on")  # fmt: skip
        if r.convert_s is not None:
            lines.append(f"{r.name}: converted in this run ({r.convert_s:.0f} s, now cached)")
        if r.note:
            lines.append(f"{r.name}: {r.note}")
        if len(r.process_decode_tok_s) > 1:
            each = " / ".join(f"{x:.1f}" for x in r.process_decode_tok_s)
            lines.append(f"{r.name}: decode tok/s of each process {each}")
    fit = [r.name for r in report.results if r.bytes_per_step and report.l3_bytes
           and r.bytes_per_step <= report.l3_bytes]  # fmt: skip
    if fit:
        lines.append(f"{', '.join(fit)}: a decode step's bytes fit in the CPU's L3 "
                     f"({report.l3_bytes / 2**20:.0f} MiB), so steps can read them from cache "
                     "and pass the DRAM bound (over 100%)")  # fmt: skip
    if report.load_avg:
        before, after = report.load_avg
        lines.append(f"load average {before:.2f} before, {after:.2f} after ({os.cpu_count()} "
                     "CPUs): a loaded machine widens the spread")  # fmt: skip
    return lines


def markdown_summary(reports: list[GenReport]) -> str:
    """Decode tok/s (prefill ms) [% of bound], a row per contender and a column per model
    and batch, with the bytes per step and the bound on top (the issue's table)."""
    cases = [f"{r.model} b{r.batch}" for r in reports]
    names = list(dict.fromkeys(x.name for r in reports for x in r.results))
    rows = ["| decode tok/s (prefill ms) [% of bound] | " + " | ".join(cases) + " |",
            "|---" * (len(cases) + 1) + "|",
            "| fp32 weights + KV read per step | "
            + " | ".join(f"{r.bytes_per_step / 1e6:.0f} MB" for r in reports) + " |",
            "| read bandwidth, bound | " + " | ".join(
                f"{r.membw_gbs:.1f} GB/s, {r.bound_tok_s:.1f}" if r.membw_gbs and r.bound_tok_s
                else "" for r in reports) + " |"]  # fmt: skip
    for name in names:
        cells = []
        for report in reports:
            r = next((x for x in report.results if x.name == name), None)
            cells.append(_summary_cell(r, report.batch * report.new_tokens))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _summary_cell(r, total: int) -> str:
    if r is None:
        return ""
    if r.error:
        if "not currently supported" in r.error:  # the model builder's word for it
            return "not supported"
        return "skipped" if r.error.startswith("skipped") else "failed"
    cell = f"{_fmt(r.decode_tok_s, '.1f')} ({_fmt(r.prefill_ms, '.0f')})"
    if r.pct_of_bound is not None:
        cell += f" [{r.pct_of_bound:.0f}%]"
    return cell if r.agree == total else cell + f" agree {r.agree}/{total}"
