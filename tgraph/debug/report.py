"""One self-contained HTML page about one pipeline run (``tgraph dump --html``).

The page holds the pipeline as a timeline (a bar per pass, as wide as its time), the op
histograms of the input and the final graph, the "why not fused" table of every rejected
rewrite, a side-by-side diff per changed pass, a provenance table (each final node: the
pass that last changed it, linked to that pass's diff; its rule, module and source line;
the input-graph nodes it replaced, linked to their lines in the input graph), the final
graph and the input graph with provenance. CSS
and a little JS are inline; the page loads nothing, so it can be mailed or attached to a
bug. Every piece of graph text is HTML-escaped. Apart from the timings the output is a
function of the graphs and records alone: no dates, no ``id()``, no dict-order accidents.

Example::

    graph, records = tgraph.optimize(traced, "default", keep_dumps=True)
    write_text_atomic("report.html", html_report(traced, graph, records))
"""

from __future__ import annotations

import difflib
import html
import os
from collections.abc import Sequence

from tgraph.debug.report_assets import CSS, JS
from tgraph.ir import Graph
from tgraph.passes.manager import PassRecord

# Unchanged lines shown around each change in a diff; longer unchanged runs fold to one row.
CONTEXT_LINES = 3


def html_report(
    input_graph: Graph,
    output_graph: Graph,
    records: Sequence[PassRecord],
    *,
    title: str | None = None,
) -> str:
    """The report page for one run of the pass manager.

    Args:
        input_graph: the graph the pipeline started from.
        output_graph: the optimized graph (shown at the end with provenance).
        records: the manager's records, from a run with ``keep_dumps=True``.
        title: the page's heading; defaults to the graph's name.

    Returns:
        The whole HTML document.

    Raises:
        ValueError: a record carries no dump (the run did not keep them).
    """
    bare = [r.name for r in records if r.dump is None]
    if bare:
        raise ValueError(
            f"the record of pass {bare[0]} has no dump; run the pipeline with keep_dumps=True"
        )
    title = title or f"tgraph report: {input_graph.name}"
    body = "\n".join(
        (
            f"<h1>{_e(title)}</h1>",
            _summary(input_graph, output_graph, records),
            _timeline(records),
            '<div class="cols">',
            _histograms(input_graph.op_histogram(), output_graph.op_histogram()),
            _rejections(records, frozenset(n.name for n in input_graph.nodes)),
            "</div>",
            _diffs(input_graph.dump(), records),
            _provenance(input_graph, output_graph, records),
            _final_graph(output_graph),
            _input_graph(input_graph),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n<script>{JS}</script>\n</body>\n</html>\n"
    )


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``: never half a file."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path}: folder {parent} does not exist")
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _anchor(index: int) -> str:
    return f"pass-{index:02d}"


def _summary(input_graph: Graph, output_graph: Graph, records: Sequence[PassRecord]) -> str:
    changed = sum(r.changed for r in records)
    rejected = sum(len(r.stats.get("rejected", ())) for r in records)
    pipeline = ",".join(r.name for r in records) or "none"
    facts = (
        ("pipeline", f"<code>{_e(pipeline)}</code>"),
        ("passes", f"{len(records)} run, {changed} changed the graph"),
        ("time", _ms(sum(r.seconds for r in records))),
        ("nodes", f"{len(input_graph.nodes)} &rarr; {len(output_graph.nodes)}"),
        ("rejected matches", str(rejected)),
    )
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def _timeline(records: Sequence[PassRecord]) -> str:
    """A row per pass; each bar starts where the passes before it ended (a Gantt chart)."""
    if not records:
        return '<section id="timeline"><h2>Timeline</h2><p>No passes ran.</p></section>'
    total = sum(r.seconds for r in records) or 1.0
    start, rows = 0.0, []
    for index, r in enumerate(records, start=1):
        state = "changed" if r.changed else "unchanged"
        target = _anchor(index) if r.changed else "unchanged"
        left, width = 100 * start / total, 100 * r.seconds / total
        start += r.seconds
        info = f"{_ms(r.seconds)} &middot; {r.nodes_before} &rarr; {r.nodes_after} nodes"
        rows.append(
            f'<div class="tl-row {state}">'
            f'<a class="tl-name" href="#{target}">{index:02d} {_e(r.name)}</a>'
            f'<div class="tl-track"><div class="tl-bar" title="{_e(r.name)}: {_ms(r.seconds)}"'
            f' style="left:{left:.2f}%;width:{width:.2f}%"></div></div>'
            f'<span class="tl-info">{info} &middot; {state}</span></div>'
        )
    return f'<section id="timeline"><h2>Timeline</h2>\n{"".join(rows)}\n</section>'


def _histograms(before: dict[str, int], after: dict[str, int]) -> str:
    def most_first(op: str) -> tuple[int, str]:
        return -max(before.get(op, 0), after.get(op, 0)), op

    ops = sorted(set(before) | set(after), key=most_first)
    top = max([*before.values(), *after.values(), 1])
    rows = []
    for op in ops:
        a, b = before.get(op, 0), after.get(op, 0)
        delta = f"{b - a:+d}" if b != a else ""
        bars = (
            f'<div class="hbar in" style="width:{100 * a / top:.1f}%"></div>'
            f'<div class="hbar out" style="width:{100 * b / top:.1f}%"></div>'
        )
        rows.append(
            f"<tr><td><code>{_e(op)}</code></td><td class=num>{a}</td><td class=num>{b}</td>"
            f'<td class=num>{delta}</td><td class="bars">{bars}</td></tr>'
        )
    head = (
        "<tr><th>op</th><th>input</th><th>final</th><th>&Delta;</th>"
        '<th><span class="key in"></span>input <span class="key out"></span>final</th></tr>'
    )
    return (
        '<section id="ops"><h2>Op histogram</h2><table class="ops">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _rejections(records: Sequence[PassRecord], known: frozenset[str] = frozenset()) -> str:
    rows = []
    for index, r in enumerate(records, start=1):
        for rej in r.stats.get("rejected", ()):
            cells = [f"{index:02d} {r.name}"]
            cells += [rej.get(k, "") for k in ("rule", "node", "module", "reason")]
            cells = [_e(c) for c in cells]
            node = rej.get("node", "")
            # A node of the input graph links to its line there: where the site came from.
            cells.append(_node_link("input", node, "input graph") if node in known else "")
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("pass", "rule", "node", "module", "reason", "origin"))
    if not rows:
        table = "<p>No rewrite was rejected.</p>"
    else:
        table = (
            '<p><input id="reject-filter" type="search" placeholder="filter rows">'
            ' <span id="reject-count"></span></p>'
            f'<table id="rejected"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return (
        '<section id="why-not-fused"><h2>Why not fused</h2>'
        "<p>Sites where a rule's pattern matched but a check refused the rewrite.</p>"
        f"{table}</section>"
    )


def _diffs(input_dump: str, records: Sequence[PassRecord]) -> str:
    parts, unchanged, before = [], [], input_dump
    for index, r in enumerate(records, start=1):
        if r.changed:
            parts.append(_pass_diff(index, r, before, r.dump))
        else:
            unchanged.append(f"{index:02d} {_e(r.name)}")
        before = r.dump
    listed = ", ".join(unchanged) or "none"
    buttons = (
        '<p><button type="button" id="expand-all">expand all</button> '
        '<button type="button" id="collapse-all">collapse all</button></p>'
    )
    return (
        f'<section id="diffs"><h2>Changes per pass</h2>{buttons if parts else ""}'
        f"{''.join(parts) or '<p>No pass changed the graph.</p>'}"
        f'<p id="unchanged">Passes that changed nothing: {listed}.</p></section>'
    )


def _pass_diff(index: int, record: PassRecord, before: str, after: str) -> str:
    rows, removed, added = _diff_rows(before.splitlines(), after.splitlines())
    matches = ", ".join(
        f"{_e(rule)} &times;{n}" for rule, n in record.stats.get("matches", {}).items() if n
    )
    summary = (
        f"<b>{index:02d} {_e(record.name)}</b> &middot; {record.nodes_before} &rarr; "
        f"{record.nodes_after} nodes &middot; "
        f'<span class="minus">&minus;{removed}</span> <span class="plus">+{added}</span> lines'
        + (f" &middot; {matches}" if matches else "")
    )
    return (
        f'<details class="pass" id="{_anchor(index)}"><summary>{summary}</summary>'
        '<table class="diff"><colgroup><col class="ln"><col><col class="ln"><col></colgroup>'
        f"<thead><tr><th></th><th>before</th><th></th><th>after</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></details>"
    )


def _diff_rows(a: list[str], b: list[str]) -> tuple[list[str], int, int]:
    """Side-by-side rows (with folded context) and the numbers of removed and added lines."""
    rows, removed, added = [], 0, 0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows += _context_rows(a, i1, i2, j1, at_end=i2 == len(a))
            continue
        removed, added = removed + i2 - i1, added + j2 - j1
        for k in range(max(i2 - i1, j2 - j1)):
            left = (i1 + k, a[i1 + k]) if i1 + k < i2 else None
            right = (j1 + k, b[j1 + k]) if j1 + k < j2 else None
            rows.append(_row(left, "del", right, "add"))
    return rows, removed, added


def _context_rows(a: list[str], i1: int, i2: int, j1: int, at_end: bool) -> list[str]:
    """Unchanged lines ``a[i1:i2]`` (``j1`` on the right): a few around changes, the rest folded."""
    head = 0 if i1 == 0 else CONTEXT_LINES
    tail = 0 if at_end else CONTEXT_LINES
    hidden = i2 - i1 - head - tail
    if hidden <= 1:
        return [_same(a, i, j1 - i1) for i in range(i1, i2)]
    rows = [_same(a, i, j1 - i1) for i in range(i1, i1 + head)]
    rows.append(f'<tr class="fold"><td colspan="4">&#8943; {hidden} unchanged lines</td></tr>')
    rows += [_same(a, i, j1 - i1) for i in range(i2 - tail, i2)]
    return rows


def _same(a: list[str], i: int, shift: int) -> str:
    return _row((i, a[i]), "", (i + shift, a[i]), "")


def _row(left: tuple[int, str] | None, lcls: str, right: tuple[int, str] | None, rcls: str) -> str:
    return f"<tr>{_cells(left, lcls)}{_cells(right, rcls)}</tr>"


def _cells(line: tuple[int, str] | None, cls: str) -> str:
    if line is None:
        return '<td class="ln"></td><td class="empty"></td>'
    number, text = line
    attr = f' class="{cls}"' if cls else ""
    return f'<td class="ln">{number + 1}</td><td{attr}>{_e(text)}</td>'


def _node_link(where: str, name: str, text: str | None = None) -> str:
    return f'<a class="node" href="#{where}-{_e(name)}">{text or _e(name)}</a>'


def _dump_lines(dump: str) -> dict[str, str]:
    """Node lines of a dump by the node's first output name."""
    out = {}
    for line in dump.splitlines():
        if line.startswith("  %"):
            out[line[3:].split(":", 1)[0]] = line
    return out


def _last_changed(input_graph: Graph, records: Sequence[PassRecord]) -> dict[str, int]:
    """For every node name, the (1-based) index of the last pass that created or changed
    its line in the dump; absent when the node is the input graph's, unchanged."""
    last: dict[str, int] = {}
    before = _dump_lines(input_graph.dump())
    for index, r in enumerate(records, start=1):
        after = _dump_lines(r.dump or "")
        for name, line in after.items():
            if before.get(name) != line:
                last[name] = index
        before = after
    return last


def _provenance(input_graph: Graph, output_graph: Graph, records: Sequence[PassRecord]) -> str:
    """Every final node: the pass that last changed it (link to its diff), the rule, the
    model module and source line, and the input-graph nodes it stands for (links)."""
    inputs = {n.name for n in input_graph.nodes}
    last = _last_changed(input_graph, records)
    rows = []
    for node in output_graph.nodes:
        meta = node.meta
        index = last.get(node.name)
        if index is None:
            created = "input graph"
        else:
            created = f'<a href="#{_anchor(index)}">{index:02d} {_e(records[index - 1].name)}</a>'
        replaced = meta.get("replaced") or ((node.name,) if node.name in inputs else ())
        origins = " ".join(
            _node_link("input", name) if name in inputs else _e(name) for name in replaced
        )
        cells = (
            f'<td id="final-{_e(node.name)}"><code>%{_e(node.name)}</code></td>',
            f"<td><code>{_e(node.op)}</code></td>",
            f"<td>{created}</td>",
            f"<td>{_e(meta.get('rule', ''))}</td>",
            f"<td>{_e(meta.get('module', ''))}</td>",
            f"<td>{_e(meta.get('source', ''))}</td>",
            f'<td class="origins">{origins}</td>',
        )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("node", "op", "last changed by", "rule", "module", "source", "stands for")
    )
    return (
        '<section id="provenance"><h2>Provenance</h2>'
        "<p>Each node of the final graph: the pass that last changed it (its diff), the rule "
        "that made it, where in the model it comes from, and the input-graph nodes it "
        "replaced.</p><details open><summary>"
        f"{len(output_graph.nodes)} nodes</summary>"
        f'<table id="provenance-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></details></section>"
    )


def _input_graph(graph: Graph) -> str:
    """The input graph with provenance, one anchor per node for the provenance links."""
    lines = []
    for line in graph.dump(provenance=True).splitlines():
        if line.startswith("  %"):
            name = line[3:].split(":", 1)[0]
            lines.append(f'<span id="input-{_e(name)}">{_e(line)}</span>')
        else:
            lines.append(_e(line))
    body = "\n".join(lines)
    return (
        '<section id="input"><h2>Input graph</h2><details><summary>dump with provenance '
        f"({len(graph.nodes)} nodes)</summary><pre>{body}</pre></details></section>"
    )


def why_not_fused_text(records: Sequence[PassRecord]) -> str:
    """The "why not fused" report as text (``tgraph dump --why-not-fused``): per rule of
    every rewrite pass, how many sites it fused and each rejected site with its reason."""
    from tgraph.passes.manager import why_not_fused

    entries = why_not_fused(records)
    rejected = sum(len(e["rejected"]) for e in entries)
    lines = [f"why not fused: {rejected} rejected sites in {len(entries)} rules"]
    for e in entries:
        lines.append(
            f"{e['pass']} / {e['rule']}: {e['fused']} fused, {len(e['rejected'])} rejected"
        )
        for site in e["rejected"]:
            module = f" ({site['module']})" if site.get("module") else ""
            lines.append(f"  %{site['node']}{module}: {site['reason']}")
    return "\n".join(lines) + "\n"


def _final_graph(graph: Graph) -> str:
    return (
        '<section id="final"><h2>Final graph</h2><details><summary>dump with provenance '
        f"({len(graph.nodes)} nodes)</summary><pre>{_e(graph.dump(provenance=True))}</pre>"
        "</details></section>"
    )
