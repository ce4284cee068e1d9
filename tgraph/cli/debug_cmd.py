"""The debugging commands: bisect a pipeline to the breaking rewrite, replay its reproducer."""

from __future__ import annotations

import sys

import click

from tgraph.backends import BACKENDS
from tgraph.cli.app import (
    POSITIVE_FLOAT,
    CliContext,
    load_checkpoint,
    main,
    pass_ctx,
    progress,
    size_options,
)


@main.command(name="bisect")
@click.argument("checkpoint")
@click.option("--pipeline", default="default", show_default=True, help="Pipeline to bisect.")
@click.option(
    "--backend", type=click.Choice(BACKENDS), default="reference",
    show_default=True, help="Whose outputs to check (on CPU) against the reference oracle.",
)  # fmt: skip
@click.option(
    "--tol",
    default=1e-4,
    show_default=True,
    type=POSITIVE_FLOAT,
    help="rtol and atol of the check.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option(
    "--out", "out_dir", default="bisect-repro", show_default=True,
    type=click.Path(file_okay=False), help="Write the reproducer here.",
)  # fmt: skip
@size_options
@pass_ctx
def bisect_(
    ctx: CliContext, checkpoint: str, pipeline: str, backend: str, tol: float, seed: int,
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
    from tgraph.debug.bisect import bisect_model
    from tgraph.passes.manager import parse_pipeline

    parse_pipeline(pipeline)
    loaded = load_checkpoint(checkpoint, batch, seq_len)
    with progress() as say:
        result = bisect_model(
            loaded.model, loaded.example_inputs, pipeline, backend=backend, tol=tol, seed=seed,
            out_dir=out_dir, progress=say,
        )  # fmt: skip
    click.echo(result.summary())
    if result.reproducer:
        click.echo(f"reproducer: {result.reproducer} (tgraph replay {result.reproducer})")
    click.echo(f"{result.probes} probes in {result.seconds:.1f} s")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--backend", type=click.Choice(BACKENDS),
    help="Run on this backend instead of the one bisect used.",
)  # fmt: skip
@pass_ctx
def replay(ctx: CliContext, directory: str, backend: str | None) -> None:
    """Run a reproducer written by `tgraph bisect` again and say whether it still drifts.

    \b
    Example:
      tgraph replay bisect-repro
    """
    from tgraph.debug.bisect import replay as run_replay

    result = run_replay(directory, backend)
    click.echo(result.summary())
    if not result.ok:
        sys.exit(1)
