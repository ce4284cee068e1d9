"""The compiler commands: dump, compile, run, diff, passes."""

from __future__ import annotations

import os

import click

from tgraph.backends import BACKENDS
from tgraph.cli.app import (
    FRACTION,
    POSITIVE,
    POSITIVE_FLOAT,
    CliContext,
    fail,
    load_checkpoint,
    main,
    pass_ctx,
    progress,
    size_options,
    trace_checkpoint,
)


@main.command()
@click.argument("checkpoint")
@size_options
@click.option(
    "--pipeline",
    help="Passes to run first  [default: none; with --dump-dir, --html or --why-not-fused: "
    "default]",
)
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
    ctx: CliContext, checkpoint: str, batch: int, seq_len: int, pipeline: str | None,
    fmt: str, provenance: bool, dump_dir: str | None, html_path: str | None, why_not: bool,
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

    \b
    Asking for per-pass output (--dump-dir, --html, --why-not-fused) without --pipeline
    runs the default pipeline: there is nothing per pass to show without one.
    """
    from tgraph.passes.manager import optimize, parse_pipeline

    if pipeline is None:
        pipeline = "default" if (dump_dir or html_path or why_not) else "none"
    parse_pipeline(pipeline)
    traced = trace_checkpoint(checkpoint, batch, seq_len)
    keep = html_path is not None
    graph, records = optimize(traced, pipeline, dump_dir=dump_dir, keep_dumps=keep)
    if html_path:
        _write_report(html_path, checkpoint, traced, graph, records)
    if why_not:
        from tgraph.debug.report import why_not_fused_text

        click.echo(why_not_fused_text(records), nl=False)
    elif fmt == "json":
        click.echo(_graph_json(graph))
    elif fmt == "dot":
        from tgraph.ir.printer import to_dot

        click.echo(to_dot(graph))
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


@main.command(name="compile")
@click.argument("checkpoint")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact directory.")
@click.option(
    "--backend", type=click.Choice(BACKENDS), default="ort",
    show_default=True,
)  # fmt: skip
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--pipeline", default="default", show_default=True, help="Named or a,b,c.")
@size_options
@click.option("--dump-dir", type=click.Path(file_okay=False), help="Write per-pass dumps here.")
@click.option(
    "--verify", is_flag=True,
    help="Check every pass numerically (reference interpreter, several sizes); fail on drift.",
)  # fmt: skip
@click.option(
    "--max-rel-error", type=POSITIVE_FLOAT, default=None,
    help="Accuracy budget for int8/int4/bf16/fp16: keep layers in fp32 until met.",
)  # fmt: skip
@click.option(
    "--min-top1", type=FRACTION, default=None,
    help="With --max-rel-error: also require this top-1 agreement with fp32 (0..1).",
)  # fmt: skip
@click.option(
    "--world-size", type=int, default=1, show_default=True,
    help="Shard over N ranks (tensor parallel, --backend torch): one weight file per rank; "
    "run it with torchrun --nproc-per-node N -m tgraph run OUTPUT.",
)  # fmt: skip
@pass_ctx
def compile_(
    ctx: CliContext, checkpoint: str, output: str, backend: str, device: str, pipeline: str,
    batch: int, seq_len: int, dump_dir: str | None, verify: bool, max_rel_error: float | None,
    min_top1: float | None, world_size: int,
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
      tgraph compile zoo:llama-tiny -o llama2.tg --backend torch --world-size 2
    """
    import tgraph
    from tgraph.passes.manager import parse_pipeline

    parse_pipeline(pipeline)
    accuracy = None
    if max_rel_error is not None:
        accuracy = {"max_rel_error": max_rel_error}
        if min_top1 is not None:
            accuracy["min_top1"] = min_top1
    elif min_top1 is not None:
        fail("--min-top1 needs --max-rel-error", code=2)
    with progress() as say:
        say(f"loading {checkpoint}")
        loaded = load_checkpoint(checkpoint, batch, seq_len)
        cm = tgraph.compile(loaded.model, loaded.example_inputs, backend=backend,
            device=device, pipeline=pipeline, dump_dir=dump_dir, progress=say, verify=verify,
            accuracy=accuracy, world_size=world_size,
        )  # fmt: skip
        say(f"saving {output}")
        if hasattr(cm, "generate") and os.path.isdir(checkpoint):
            cm.tokenizer_dir = checkpoint  # the artifact keeps the tokenizer for `tgraph generate`
        cm.save(output)
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
@click.option(
    "--batch", default=1, show_default=True, type=POSITIVE, help="Batch size for --random."
)
@click.option(
    "--seq-len", default=8, show_default=True, type=POSITIVE, help="Sequence length for --random."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--output", "output_path", type=click.Path(), help="Write outputs to this .npz.")
@pass_ctx
def run(
    ctx: CliContext, artifact: str, inputs_path: str | None, random_inputs: bool, batch: int,
    seq_len: int, seed: int, output_path: str | None,
) -> None:  # fmt: skip
    """Run a compiled ARTIFACT on inputs from an .npz (by input name) or random ones.

    Without --inputs or --random it runs on seeded random inputs of the sizes the model
    was traced with. An input the .npz leaves out that the model's forward can omit
    (attention_mask, token_type_ids, ...) gets the model's own default.

    \b
    Examples:
      tgraph run gpt.tg
      tgraph run gpt.tg --random --batch 2 --seq-len 16
      tgraph run bert.tg --inputs inputs.npz --output outputs.npz
      torchrun --nproc-per-node 2 -m tgraph run llama2.tg --random   (a sharded artifact)
    """
    from tgraph.cli.npz_io import random_run_inputs, read_inputs, run_flat, summarize, write_outputs
    from tgraph.distributed import end_launch
    from tgraph.sharded import is_main, load_launched, memory_line

    if inputs_path and random_inputs:
        fail("give one of --inputs FILE.npz or --random, not both", code=2)
    cm = load_launched(artifact)  # a sharded artifact: this torchrun rank's weights
    if inputs_path:
        given = read_inputs(cm.graph, inputs_path)
    else:
        sizes = {s: (batch if s == "batch" else seq_len) for s in cm.graph.symbols()}
        if not random_inputs:
            sizes = cm.graph.meta.get("example_sizes") or {}
        given = random_run_inputs(cm.graph, sizes, seed)
        if not random_inputs:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items())) or "static shapes"
            given.notes.append(f"no --inputs: random inputs of the traced sizes ({shown}), "
                               f"seed {seed}")  # fmt: skip
    outputs = run_flat(cm, given.arrays)
    if cm.sharding is not None:
        click.echo(memory_line(cm), err=True)
        end_launch()
    if not is_main(cm):
        return
    for note in given.notes:  # after the run: a failure stays one line
        click.echo(note, err=True)
    if output_path:
        write_outputs(output_path, outputs)
    click.echo(summarize(outputs), nl=False)


@main.command()
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@pass_ctx
def diff(ctx: CliContext, a: str, b: str) -> None:
    """Unified diff of two dump files, or of two dump directories file by file.

    \b
    Examples:
      tgraph diff dumps/03-fuse-linear.txt dumps/04-fuse-attention.txt
      tgraph diff dumps-before/ dumps-after/
    """
    from tgraph.passes.manager import diff as diff_text

    if os.path.isdir(a) != os.path.isdir(b):
        fail("give two dump files or two dump directories", code=2)
    pairs = [(a, b)]
    if os.path.isdir(a):
        names = sorted(set(os.listdir(a)) | set(os.listdir(b)))
        pairs = [(os.path.join(a, n), os.path.join(b, n)) for n in names if n.endswith(".txt")]
    for pa, pb in pairs:
        ta = _read_text(pa)
        tb = _read_text(pb)
        click.echo(diff_text(ta, tb, pa, pb), nl=False)


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


@main.command()
def passes() -> None:
    """List the registered passes, then the named pipelines, one line each.

    \b
    Example:
      tgraph passes
    """
    from tgraph.passes.registry import list_passes, list_pipelines

    passes_, pipelines = list_passes(), list_pipelines()
    width = max(len(n) for n in [*passes_, *pipelines])
    click.echo("passes:")
    for name, desc in passes_.items():
        click.echo(f"  {name:<{width}}  {desc}")
    click.echo("\npipelines:")
    for name, entry in pipelines.items():
        click.echo(f"  {name:<{width}}  {entry['description']}")
