"""The ``tgraph`` command line: a thin shell over the Python API.

Errors print one line on stderr and exit 1 (2 for usage errors); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Any

import click

CHECKPOINT_HELP = (
    "CHECKPOINT is zoo:NAME (a built-in config with random weights, e.g. zoo:gpt-tiny), "
    "a zoo .pt checkpoint, or a torch.export .pt2 program."
)


class _Context:
    debug = False


pass_ctx = click.make_pass_decorator(_Context, ensure=True)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"tgraph: error: {message}", err=True)
    sys.exit(code)


def _run(ctx: _Context, fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; expected failures become one line on stderr (tracebacks with --debug)."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into a line
        if ctx.debug:
            raise
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(text.strip("'\""))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(package_name="tgraph")
@pass_ctx
def main(ctx: _Context, debug: bool) -> None:
    """tgraph: a compute-graph compiler for Transformer models.

    \b
    Examples:
      tgraph dump zoo:gpt-tiny
      tgraph dump model.pt --dump-dir dumps/
    """
    ctx.debug = debug


def _trace(checkpoint: str, batch: int, seq_len: int):
    import tgraph
    from tgraph.checkpoints import load_model

    loaded = load_model(checkpoint, batch=batch, seq=seq_len)
    return tgraph.trace(loaded.model, loaded.example_inputs)


@main.command()
@click.argument("checkpoint")
@click.option("--batch", default=2, show_default=True, help="Example batch size for tracing.")
@click.option("--seq-len", default=16, show_default=True, help="Example sequence length.")
@click.option(
    "--format", "fmt", type=click.Choice(["text"]), default="text", show_default=True,
    help="Output format.",
)  # fmt: skip
@click.option("--provenance", is_flag=True, help="Show each node's source module and line.")
@click.option("--dump-dir", type=click.Path(file_okay=False), help="Also write dump files here.")
@pass_ctx
def dump(
    ctx: _Context, checkpoint: str, batch: int, seq_len: int, fmt: str, provenance: bool,
    dump_dir: str | None,
) -> None:  # fmt: skip
    """Print the traced graph of CHECKPOINT.

    \b
    CHECKPOINT is zoo:NAME (a built-in config with random weights, e.g. zoo:gpt-tiny),
    a zoo .pt checkpoint, or a torch.export .pt2 program.

    \b
    Examples:
      tgraph dump zoo:gpt-tiny
      tgraph dump zoo:bert-tiny --provenance
      tgraph dump model.pt --dump-dir dumps/
    """
    graph = _run(ctx, _trace, checkpoint, batch, seq_len)
    if dump_dir:
        from tgraph.passmanager import optimize

        _run(ctx, optimize, graph, "none", dump_dir=dump_dir)
    click.echo(graph.dump(provenance=provenance), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
