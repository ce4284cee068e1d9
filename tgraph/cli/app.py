"""The ``tgraph`` command group: error handling, shared options and helpers.

Errors print one line on stderr and exit 1 (2 for usage errors); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Any

import click


class CliContext:
    debug = False


pass_ctx = click.make_pass_decorator(CliContext, ensure=True)


class UsageError(click.UsageError):
    """A bad combination of options: one line and exit 2, like click's own usage errors."""

    exit_code = 2


def fail(message: str, code: int = 1) -> None:
    """Stop with one line: exit 2 for usage errors, 1 otherwise."""
    if code == 2:
        raise UsageError(message)
    raise click.ClickException(message)


def error_line(e: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without repr quotes)."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]
    else:
        text = str(e)
    text = text.strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


class _Group(click.Group):
    """The command group that turns every error into one line on stderr, once for all
    commands: exit 1 for a failure or a bad value (``--batch 0``: bad input, as a missing
    file is), 2 for a malformed command line (an unknown option, a missing argument, options
    that do not go together); ``--debug`` re-raises instead."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except click.BadParameter as e:
            click.echo(f"tgraph: error: {e.format_message()}", err=True)
            sys.exit(1)
        except click.UsageError as e:
            click.echo(f"tgraph: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into a line
            if ctx.find_object(CliContext) is not None and ctx.find_object(CliContext).debug:
                raise
            message = e.format_message() if isinstance(e, click.ClickException) else error_line(e)
            click.echo(f"tgraph: error: {message}", err=True)
            sys.exit(1)


# Sizes, counts and tolerances: an out-of-range value fails (exit 1) before any work.
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
FRACTION = click.FloatRange(min=0.0, max=1.0)
POSITIVE_FLOAT = click.FloatRange(min=0.0, min_open=True)


def name_list(option: str, text: str) -> tuple[str, ...]:
    """``"a,b,c"`` as names; an empty entry (``"a,,b"``, a trailing comma) fails (exit 1)."""
    names = tuple(n.strip() for n in text.split(","))
    if text and not all(names):
        fail(f"{option} {text!r}: entry {names.index('') + 1} is empty; remove the extra comma")
    return names if text else ()


def size_options(fn):
    fn = click.option(
        "--seq-len",
        default=16,
        show_default=True,
        type=POSITIVE,
        help="Example sequence length for tracing.",
    )(fn)
    return click.option(
        "--batch",
        default=2,
        show_default=True,
        type=POSITIVE,
        help="Example batch size for tracing.",
    )(fn)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(package_name="tgraph")
@pass_ctx
def main(ctx: CliContext, debug: bool) -> None:
    """tgraph: a compute-graph compiler for Transformer models.

    \b
    A session:
      tgraph compile zoo:gpt-tiny -o gpt.tg --dump-dir dumps/
      tgraph run gpt.tg --random --output out.npz
      tgraph diff dumps/00-input.txt dumps/04-fuse-attention.txt
      tgraph passes
    """
    ctx.debug = debug


def load_checkpoint(checkpoint: str, batch: int, seq_len: int):
    from tgraph.cli.checkpoints import load_model

    return load_model(checkpoint, batch=batch, seq=seq_len)


def trace_checkpoint(checkpoint: str, batch: int, seq_len: int):
    import tgraph

    loaded = load_checkpoint(checkpoint, batch, seq_len)
    return tgraph.trace(loaded.model, loaded.example_inputs)


def progress():
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
