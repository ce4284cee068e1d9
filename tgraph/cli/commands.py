"""The ``tgraph`` command line: a thin shell over the Python API.

Errors print one line on stderr and exit 1 (2 for usage errors); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click


class _Context:
    debug = False


pass_ctx = click.make_pass_decorator(_Context, ensure=True)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"tgraph: error: {message}", err=True)
    sys.exit(code)


def _run(ctx: _Context, fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; failures become one line on stderr (tracebacks with --debug)."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, click.exceptions.Exit):
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into a line
        if ctx.debug:
            raise
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(text.strip("'\""))


def _size_options(fn):
    fn = click.option(
        "--seq-len", default=16, show_default=True, help="Example sequence length for tracing."
    )(fn)
    return click.option(
        "--batch", default=2, show_default=True, help="Example batch size for tracing."
    )(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(package_name="tgraph")
@pass_ctx
def main(ctx: _Context, debug: bool) -> None:
    """tgraph: a compute-graph compiler for Transformer models.

    \b
    A session:
      tgraph compile zoo:gpt-tiny -o gpt.tg --dump-dir dumps/
      tgraph run gpt.tg --random --output out.npz
      tgraph diff dumps/00-input.txt dumps/04-fuse-attention.txt
      tgraph passes
    """
    ctx.debug = debug


def _load(checkpoint: str, batch: int, seq_len: int):
    from tgraph.cli.checkpoints import load_model

    return load_model(checkpoint, batch=batch, seq=seq_len)


def _trace(checkpoint: str, batch: int, seq_len: int):
    import tgraph

    loaded = _load(checkpoint, batch, seq_len)
    return tgraph.trace(loaded.model, loaded.example_inputs)


@main.command()
@click.argument("checkpoint")
@_size_options
@click.option("--pipeline", default="none", show_default=True, help="Passes to run first.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "dot"]), default="text",
    show_default=True, help="Output format of the final graph.",
)  # fmt: skip
@click.option("--provenance", is_flag=True, help="Show each node's source module and line.")
@click.option("--dump-dir", type=click.Path(file_okay=False), help="Write per-pass dumps here.")
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False),
    help="Also write a self-contained HTML report of the pipeline run here.",
)  # fmt: skip
@click.option(
    "--why-not-fused", "why_not", is_flag=True,
    help="Print, per fusion rule, the sites it fused and why each other candidate was not.",
)  # fmt: skip
@pass_ctx
def dump(
    ctx: _Context, checkpoint: str, batch: int, seq_len: int, pipeline: str, fmt: str,
    provenance: bool, dump_dir: str | None, html_path: str | None, why_not: bool,
) -> None:  # fmt: skip
    """Print the graph of CHECKPOINT, traced and optionally optimized.

    \b
    CHECKPOINT is zoo:NAME (a built-in config with random weights, e.g. zoo:gpt-tiny),
    a zoo .pt checkpoint, a torch.export .pt2 program or a Hugging Face model directory.

    \b
    Examples:
      tgraph dump zoo:gpt-tiny
      tgraph dump zoo:bert-tiny --pipeline default --provenance
      tgraph dump model.pt --pipeline default --dump-dir dumps/
      tgraph dump zoo:llama-tiny --format dot | dot -Tsvg > llama.svg
      tgraph dump zoo:gpt-tiny --pipeline default --html report.html
      tgraph dump zoo:bert-tiny --pipeline default --why-not-fused

    \b
    --html writes one HTML file (no network needed to view it): the pipeline as a
    timeline, op histograms, a side-by-side diff per pass and the "why not fused"
    table. The graph is still printed.
    """
    from tgraph.passes.manager import optimize, parse_pipeline

    _run(ctx, parse_pipeline, pipeline)
    traced = _run(ctx, _trace, checkpoint, batch, seq_len)
    keep = html_path is not None
    graph, records = _run(ctx, optimize, traced, pipeline, dump_dir=dump_dir, keep_dumps=keep)
    if html_path:
        _run(ctx, _write_report, html_path, checkpoint, traced, graph, records)
    if why_not:
        from tgraph.debug.report import why_not_fused_text

        click.echo(why_not_fused_text(records), nl=False)
    elif fmt == "json":
        click.echo(_graph_json(graph))
    elif fmt == "dot":
        click.echo(_graph_dot(graph))
    else:
        click.echo(graph.dump(provenance=provenance), nl=False)


def _write_report(path: str, checkpoint: str, traced, graph, records) -> None:
    from tgraph.debug.report import html_report, write_text_atomic

    write_text_atomic(path, html_report(traced, graph, records, title=f"tgraph: {checkpoint}"))


def _graph_json(graph) -> str:
    import json

    from tgraph.ir.serialize import to_json

    doc, _ = to_json(graph)
    return json.dumps(doc, indent=1, sort_keys=True)


def _graph_dot(graph) -> str:
    lines = [f'digraph "{graph.name}" {{', "  node [shape=box, fontname=monospace];"]
    ids = {}
    for i, v in enumerate(graph.inputs):
        ids[id(v)] = f"in{i}"
        lines.append(f'  in{i} [label="{v.name}\\n{v.type}", shape=ellipse];')
    for i, node in enumerate(graph.nodes):
        for v in node.outputs:
            ids[id(v)] = f"n{i}"
        label = f"{node.op}\\n" + ", ".join(str(v.type) for v in node.outputs)
        lines.append(f'  n{i} [label="{label}"];')
        for v in node.inputs:
            if v is not None and id(v) in ids:
                lines.append(f"  {ids[id(v)]} -> n{i};")
    for i, v in enumerate(graph.outputs):
        lines.append(f'  out{i} [label="{v.name}", shape=ellipse];')
        if id(v) in ids:
            lines.append(f"  {ids[id(v)]} -> out{i};")
    lines.append("}")
    return "\n".join(lines)


@main.command(name="compile")
@click.argument("checkpoint")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact directory.")
@click.option(
    "--backend", type=click.Choice(["ort", "torch", "reference"]), default="ort",
    show_default=True,
)  # fmt: skip
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--pipeline", default="default", show_default=True, help="Named or a,b,c.")
@_size_options
@click.option("--dump-dir", type=click.Path(file_okay=False), help="Write per-pass dumps here.")
@click.option(
    "--verify", is_flag=True,
    help="Check every pass numerically (reference interpreter, several sizes); fail on drift.",
)  # fmt: skip
@click.option(
    "--max-rel-error", type=float, default=None,
    help="Accuracy budget for int8/int4/bf16/fp16: keep layers in fp32 until met.",
)  # fmt: skip
@click.option(
    "--min-top1", type=float, default=None,
    help="With --max-rel-error: also require this top-1 agreement with fp32 (0..1).",
)  # fmt: skip
@pass_ctx
def compile_(
    ctx: _Context, checkpoint: str, output: str, backend: str, device: str, pipeline: str,
    batch: int, seq_len: int, dump_dir: str | None, verify: bool, max_rel_error: float | None,
    min_top1: float | None,
) -> None:  # fmt: skip
    """Compile CHECKPOINT into an artifact directory that `tgraph run` executes.

    \b
    CHECKPOINT is zoo:NAME, a zoo .pt checkpoint, a .pt2 program or a Hugging Face
    model directory. The artifact is written atomically: a failed compile leaves an
    existing OUTPUT untouched.

    \b
    Examples:
      tgraph compile zoo:gpt-tiny -o gpt.tg
      tgraph compile ./bert-dir -o bert.tg --backend torch --pipeline default
      tgraph compile model.pt2 -o m.tg --dump-dir dumps/
      tgraph compile zoo:bert-tiny -o bert.tg --verify
      tgraph compile zoo:gpt-tiny -o gpt8.tg --pipeline int8 --max-rel-error 1e-2
    """
    import tgraph
    from tgraph.passes.manager import parse_pipeline

    _run(ctx, parse_pipeline, pipeline)
    accuracy = None
    if max_rel_error is not None:
        accuracy = {"max_rel_error": max_rel_error}
        if min_top1 is not None:
            accuracy["min_top1"] = min_top1
    elif min_top1 is not None:
        _fail("--min-top1 needs --max-rel-error", code=2)
    with _progress() as say:
        say(f"loading {checkpoint}")
        loaded = _run(ctx, _load, checkpoint, batch, seq_len)
        cm = _run(
            ctx, tgraph.compile, loaded.model, loaded.example_inputs, backend=backend,
            device=device, pipeline=pipeline, dump_dir=dump_dir, progress=say, verify=verify,
            accuracy=accuracy,
        )  # fmt: skip
        say(f"saving {output}")
        _run(ctx, cm.save, output)
    nodes = cm.report[0].nodes_before if cm.report else len(cm.graph.nodes)
    click.echo(
        f"compiled {loaded.name}: {nodes} -> {len(cm.graph.nodes)} nodes, "
        f"backend {backend}, wrote {output}"
    )
    if cm.accuracy is not None:
        click.echo(cm.accuracy.summary())


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--inputs", "inputs_path", type=click.Path(), help=".npz with one array per input.")
@click.option("--random", "random_inputs", is_flag=True, help="Use seeded random inputs.")
@click.option("--batch", default=1, show_default=True, help="Batch size for --random.")
@click.option("--seq-len", default=8, show_default=True, help="Sequence length for --random.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random.")
@click.option("--output", "output_path", type=click.Path(), help="Write outputs to this .npz.")
@pass_ctx
def run(
    ctx: _Context, artifact: str, inputs_path: str | None, random_inputs: bool, batch: int,
    seq_len: int, seed: int, output_path: str | None,
) -> None:  # fmt: skip
    """Run a compiled ARTIFACT on inputs from an .npz (by input name) or random ones.

    \b
    Examples:
      tgraph run gpt.tg --random --batch 2 --seq-len 16
      tgraph run bert.tg --inputs inputs.npz --output outputs.npz
    """
    import tgraph
    from tgraph.cli.npz_io import read_inputs, run_flat, summarize, write_outputs

    if bool(inputs_path) == random_inputs:
        _fail("give exactly one of --inputs FILE.npz or --random", code=2)
    cm = _run(ctx, tgraph.load, artifact)
    arrays = _run(ctx, read_inputs, cm.graph, inputs_path, random_inputs, batch, seq_len, seed)
    outputs = _run(ctx, run_flat, cm, arrays)
    if output_path:
        _run(ctx, write_outputs, output_path, outputs)
    click.echo(summarize(outputs), nl=False)


@main.command()
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@pass_ctx
def diff(ctx: _Context, a: str, b: str) -> None:
    """Unified diff of two dump files, or of two dump directories file by file.

    \b
    Examples:
      tgraph diff dumps/03-fuse-linear.txt dumps/04-fuse-attention.txt
      tgraph diff dumps-before/ dumps-after/
    """
    from tgraph.passes.manager import diff as diff_text

    if os.path.isdir(a) != os.path.isdir(b):
        _fail("give two dump files or two dump directories", code=2)
    pairs = [(a, b)]
    if os.path.isdir(a):
        names = sorted(set(os.listdir(a)) | set(os.listdir(b)))
        pairs = [(os.path.join(a, n), os.path.join(b, n)) for n in names if n.endswith(".txt")]
    for pa, pb in pairs:
        ta = _run(ctx, _read_text, pa)
        tb = _run(ctx, _read_text, pb)
        click.echo(diff_text(ta, tb, pa, pb), nl=False)


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


@main.command()
@click.argument("checkpoint")
@click.option(
    "--backends",
    help="Comma-separated contenders: eager, torch.compile, ort-plain, ort-optimizer, "
    "ort-int8, openvino, openvino-bf16, tgraph-ort, tgraph-torch, tgraph-ort[int8], ... and on "
    "CUDA torch.compile[reduce-overhead]  [default: eager,torch.compile,ort-optimizer,"
    "tgraph-ort,tgraph-torch; with --device cuda: eager,torch.compile,"
    "torch.compile[reduce-overhead],tgraph-torch]",
)  # fmt: skip
@click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
    help="Run every contender here (cuda: timed with torch.cuda.synchronize; docs/gpu.md).",
)  # fmt: skip
@click.option(
    "--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
    help="The model's dtype for the contenders; errors are against eager fp32.",
)  # fmt: skip
@click.option("--batch", default=1, show_default=True, help="Batch size.")
@click.option(
    "--seq-len", type=int,
    help="Sequence length  [default: 128, or a zoo model's longest if shorter]",
)  # fmt: skip
@click.option("--pipeline", default="default", show_default=True, help="tgraph pipeline.")
@click.option(
    "--pipelines", default="",
    help="Comma-separated pipelines: one tgraph-<backend>[<pipeline>] column per pipeline "
    "and tgraph backend (default,int8,bf16 -> tgraph-ort, tgraph-ort[int8], tgraph-ort[bf16]).",
)  # fmt: skip
@click.option("--repeats", default=20, show_default=True, help="Timed rounds.")
@click.option("--warmup", default=3, show_default=True, help="Untimed rounds first.")
@click.option("--threads", type=int, help="Intra-op threads (default: torch's setting).")
@click.option("--json", "json_path", type=click.Path(), help="Also write the results as JSON.")
@click.option(
    "--per-pass", is_flag=True,
    help="Time the pipeline with each fusion pass switched off in turn, on the first "
    "tgraph-* backend of --backends.",
)  # fmt: skip
@pass_ctx
def bench(
    ctx: _Context, checkpoint: str, backends: str | None, device: str, dtype: str, batch: int,
    seq_len: int, pipeline: str, pipelines: str, repeats: int, warmup: int,
    threads: int | None, json_path: str | None, per_pass: bool,
) -> None:  # fmt: skip
    """Time CHECKPOINT side by side: eager, torch.compile, ONNX Runtime, tgraph.

    Contenders run interleaved, one call each per round; the table shows the median,
    the interquartile range, the ratio to eager and the max abs error against eager.

    \b
    Examples:
      tgraph bench zoo:gpt-tiny
      tgraph bench zoo:bert-base --batch 1 --seq-len 128 --json bert.json
      tgraph bench ./hf-model --backends eager,ort-plain,tgraph-ort
      tgraph bench zoo:bert-base --pipelines default,int8,bf16 --backends eager,ort-int8,tgraph-ort
      tgraph bench zoo:bert-base --per-pass --backends tgraph-ort
      tgraph bench ./hf-model --device cuda --dtype fp16 --pipelines default,fp16
    """
    import json

    from tgraph.bench import DEFAULT_CONTENDERS, GPU_DEFAULT_CONTENDERS

    if backends is None:
        backends = ",".join(GPU_DEFAULT_CONTENDERS if device == "cuda" else DEFAULT_CONTENDERS)
    seq_len = seq_len or _default_seq(checkpoint)
    if device == "cuda" or dtype != "fp32":
        if per_pass:
            _fail("--per-pass runs on the CPU in fp32 only", code=2)
        _check_cuda(device)
    if per_pass:
        _bench_per_pass(ctx, checkpoint, backends, batch, seq_len, pipeline, repeats, warmup,
                        threads, json_path)  # fmt: skip
        return

    from tgraph.bench import bench as run_bench
    from tgraph.bench import format_table

    contenders = tuple(b.strip() for b in backends.split(",") if b.strip())
    loaded = _run(ctx, _load, checkpoint, batch, seq_len)
    with _progress() as say:
        report = _run(
            ctx, run_bench, loaded.model, loaded.example_inputs, name=loaded.name,
            contenders=contenders, repeats=repeats, warmup=warmup, pipeline=pipeline,
            pipelines=[p.strip() for p in pipelines.split(",") if p.strip()],
            threads=threads, device=device, dtype=dtype, progress=say,
        )  # fmt: skip
    _print_table(report, format_table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")


def _check_cuda(device: str) -> None:
    """Fail with one line before loading anything when CUDA is asked for but absent."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        _fail(f"--device cuda: torch {torch.__version__} sees no CUDA GPU on this machine")


def _default_seq(checkpoint: str, want: int = 128) -> int:
    """``want``, or a zoo model's longest sequence when shorter (zoo:gpt-tiny takes 64)."""
    from tgraph.models.zoo import ZOO

    entry = ZOO.get(checkpoint[4:]) if checkpoint.startswith("zoo:") else None
    config = entry[1] if entry else None
    for field in ("max_seq", "block_size", "max_position_embeddings"):
        limit = getattr(config, field, None)
        if isinstance(limit, int):
            return min(want, limit)
    return want


def _bench_per_pass(
    ctx: _Context, checkpoint: str, backends: str, batch: int, seq_len: int, pipeline: str,
    repeats: int, warmup: int, threads: int | None, json_path: str | None,
) -> None:  # fmt: skip
    import json

    from tgraph.debug.perpass import format_report, per_pass_bench

    chosen = [b.strip()[len("tgraph-") :] for b in backends.split(",")
              if b.strip().startswith("tgraph-")]  # fmt: skip
    if not chosen:
        _fail("--per-pass needs a tgraph-* backend in --backends (e.g. tgraph-ort)", code=2)
    loaded = _run(ctx, _load, checkpoint, batch, seq_len)
    with _progress() as say:
        report = _run(
            ctx, per_pass_bench, loaded.model, loaded.example_inputs, name=loaded.name,
            backend=chosen[0], pipeline=pipeline, repeats=repeats, warmup=warmup,
            threads=threads, progress=say,
        )  # fmt: skip
    click.echo(format_report(report))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")


@main.command(name="bisect")
@click.argument("checkpoint")
@click.option("--pipeline", default="default", show_default=True, help="Pipeline to bisect.")
@click.option(
    "--backend", type=click.Choice(["reference", "ort", "torch"]), default="reference",
    show_default=True, help="Whose outputs to check (on CPU) against the reference oracle.",
)  # fmt: skip
@click.option("--tol", default=1e-4, show_default=True, help="rtol and atol of the check.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option(
    "--out", "out_dir", default="bisect-repro", show_default=True,
    type=click.Path(file_okay=False), help="Write the reproducer here.",
)  # fmt: skip
@_size_options
@pass_ctx
def bisect_(
    ctx: _Context, checkpoint: str, pipeline: str, backend: str, tol: float, seed: int,
    out_dir: str, batch: int, seq_len: int,
) -> None:  # fmt: skip
    """Find the pass, and the rewrite inside it, that breaks CHECKPOINT's outputs.

    Binary search over the pipeline's passes, then over the culprit rewrite pass's
    matches (max_matches), comparing BACKEND's outputs with the reference interpreter
    on the unoptimized graph. Writes a reproducer that `tgraph replay` runs again.

    \b
    Examples:
      tgraph bisect zoo:bert-tiny --pipeline default --backend ort
      tgraph bisect ./bert-dir --pipeline fold-constants,fuse-gelu --tol 1e-3
      tgraph replay bisect-repro
    """
    import tgraph
    from tgraph.api import flatten_call, model_tensors
    from tgraph.debug.bisect import bisect as run_bisect
    from tgraph.debug.numcheck import traced_bindings
    from tgraph.frontend import normalize_inputs
    from tgraph.passes.manager import parse_pipeline

    _run(ctx, parse_pipeline, pipeline)
    loaded = _run(ctx, _load, checkpoint, batch, seq_len)
    graph = _run(ctx, tgraph.trace, loaded.model, loaded.example_inputs)
    args, kwargs = normalize_inputs(loaded.example_inputs)
    tensors = _run(ctx, flatten_call, graph, args, kwargs)
    traced = traced_bindings(graph, [tuple(t.shape) for t in tensors])
    params = model_tensors(loaded.model) if hasattr(loaded.model, "named_parameters") else None
    with _progress() as say:
        result = _run(
            ctx, run_bisect, graph, pipeline, backend=backend, tol=tol, params=params,
            traced=traced, seed=seed, out_dir=out_dir, progress=say,
        )  # fmt: skip
    click.echo(result.summary())
    if result.reproducer:
        click.echo(f"reproducer: {result.reproducer} (tgraph replay {result.reproducer})")
    click.echo(f"{result.probes} probes in {result.seconds:.1f} s")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--backend", type=click.Choice(["reference", "ort", "torch"]),
    help="Run on this backend instead of the one bisect used.",
)  # fmt: skip
@pass_ctx
def replay(ctx: _Context, directory: str, backend: str | None) -> None:
    """Run a reproducer written by `tgraph bisect` again and say whether it still drifts.

    \b
    Example:
      tgraph replay bisect-repro
    """
    from tgraph.debug.bisect import replay as run_replay

    result = _run(ctx, run_replay, directory, backend)
    click.echo(result.summary())
    if not result.ok:
        sys.exit(1)


def _progress():
    """A rich status line on a terminal; silent otherwise."""
    import contextlib

    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return contextlib.nullcontext(lambda _msg: None)

    @contextlib.contextmanager
    def status():
        with console.status("starting") as st:
            yield lambda msg: st.update(msg)

    return status()


def _print_table(report, format_table) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        click.echo(format_table(report))
        return
    table = Table(title=f"{report.model}  batch {report.batch}  seq {report.seq_len}  "
                  f"threads {report.threads}")  # fmt: skip
    from tgraph.bench import COLUMNS, notes, table_rows

    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("contender", "build s") else "right")
    for row in table_rows(report):
        table.add_row(*row, *[""] * (len(COLUMNS) - len(row)))
    console.print(table)
    for line in notes(report):
        console.print(line)


@main.command()
def passes() -> None:
    """List the registered passes and named pipelines, one line each.

    \b
    Example:
      tgraph passes
    """
    from tgraph.passes.manager import list_passes

    entries = list_passes()
    width = max(len(n) for n in entries)
    for name, desc in entries.items():
        click.echo(f"{name:<{width}}  {desc}")


if __name__ == "__main__":  # pragma: no cover
    main()
