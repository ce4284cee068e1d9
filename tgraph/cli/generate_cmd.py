"""``tgraph generate``: text (or token ids) from a causal LM checkpoint or artifact."""

from __future__ import annotations

import os
from typing import Any

import click

from tgraph.cli.app import CliContext, fail, load_checkpoint, main, pass_ctx, progress


@main.command()
@click.argument("source")
@click.option("--prompt", help="Prompt text (needs a tokenizer in the model directory).")
@click.option("--prompt-ids", help="Prompt as token ids: 1,2,3.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--do-sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --do-sample.")
@click.option(
    "--backend", type=click.Choice(["ort", "torch", "reference"]), default="ort",
    show_default=True, help="For a checkpoint; an artifact runs on its own (naming another is an error).",
)  # fmt: skip
@click.option(
    "--pipeline", default="default", show_default=True,
    help="For a checkpoint; an artifact keeps its own (naming another is an error).",
)  # fmt: skip
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(), help="Tokenizer directory.")
@pass_ctx
def generate(
    ctx: CliContext, source: str, prompt: str | None, prompt_ids: str | None,
    max_new_tokens: int, do_sample: bool, temperature: float, top_k: int | None,
    top_p: float | None, seed: int, backend: str, pipeline: str, tokenizer_dir: str | None,
) -> None:  # fmt: skip
    """Generate from SOURCE: a Hugging Face causal LM directory, zoo:NAME, or an artifact
    that `tgraph compile` wrote from one. Prints tokens as they come, then prefill ms and
    decode tok/s.

    \b
    Examples:
      tgraph generate ./llama-dir --prompt "Once upon a time" --max-new-tokens 64
      tgraph generate llama.tg --prompt-ids 1,450,4996 --do-sample --top-p 0.9
    """
    import torch

    from tgraph.generation.generator import GenerationError, new_token_count

    if (prompt is None) == (prompt_ids is None):
        fail("give exactly one of --prompt TEXT and --prompt-ids 1,2,3", code=2)
    try:
        new_token_count(max_new_tokens, None, 0)  # fail before the slow compile
    except GenerationError as e:
        fail(str(e))
    tokenizer = None
    if prompt is not None:
        tokenizer = _tokenizer(tokenizer_dir or _model_dir(source))
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = torch.tensor([_parse_ids(prompt_ids)])
    with progress() as say:
        gen = _generator(source, backend, pipeline, say)
    streamer = _Printer(tokenizer)
    gen.generate(ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 streamer=streamer)  # fmt: skip
    t = gen.last_timings
    click.echo(
        f"prefill {t.prefill_s * 1e3:.1f} ms ({t.prompt_len} tokens), decode "
        f"{t.decode_tokens_per_s:.1f} tok/s ({t.new_tokens} new tokens, backend {gen.backend})"
    )


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        fail(f"--prompt-ids {text!r}: want comma-separated integers such as 1,2,3")
    if not ids:
        fail("--prompt-ids is empty")
    return ids


def _model_dir(source: str) -> str:
    if source.startswith("zoo:") or not os.path.isdir(source):
        fail(f"{source}: --prompt needs a tokenizer directory; give --tokenizer DIR or use "
             "--prompt-ids")  # fmt: skip
    return source


def _tokenizer(directory: str) -> Any:
    from tgraph.generation.artifact import TOKENIZER_FILES

    if not any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES[:2]):
        fail(f"{directory}: no tokenizer (tokenizer.json, tokenizer_config.json); give "
             "--tokenizer DIR or use --prompt-ids")  # fmt: skip
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        fail(f"{directory}: no usable tokenizer ({first[:120]}); give --tokenizer DIR or use "
             "--prompt-ids")  # fmt: skip


def _generator(source: str, backend: str, pipeline: str, say) -> Any:
    import tgraph
    from tgraph.generation.compile import is_causal_lm
    from tgraph.generation.generator import Generator

    if os.path.exists(os.path.join(source, "manifest.json")):
        say(f"loading {source}")
        gen = tgraph.load(source)
        if not isinstance(gen, Generator):
            fail(f"{source}: the artifact is not a causal LM; tgraph generate needs one")
        from tgraph.passes.registry import pipeline_text

        _refuse_other(source, "backend", backend, backend == gen.backend, gen.backend)
        same = (pipeline_text(pipeline) or pipeline) == gen.pipeline  # the artifact keeps the list
        _refuse_other(source, "pipeline", pipeline, same, _pipeline_name(gen.pipeline))
        return gen
    say(f"loading {source}")
    loaded = load_checkpoint(source, 1, 8)
    if not is_causal_lm(loaded.model):
        fail(f"{source}: {type(loaded.model).__name__} is not a causal LM; tgraph generate "
             "needs one (a *ForCausalLM checkpoint)")  # fmt: skip
    return tgraph.compile(loaded.model, loaded.example_inputs, backend=backend,
                          pipeline=pipeline, progress=say)  # fmt: skip


def _pipeline_name(passes: str) -> str:
    """The registered name of a pipeline's pass list (an artifact keeps the list)."""
    from tgraph.passes.registry import list_pipelines

    names = [n for n, p in list_pipelines().items() if p["passes"] == passes]
    return names[0] if names else passes


def _refuse_other(source: str, option: str, given: str, same: bool, kept: str) -> None:
    """An artifact runs as it was compiled: an explicit --backend / --pipeline that is not
    its own (``same`` False) is an error, not silently ignored."""
    from click.core import ParameterSource

    explicit = click.get_current_context().get_parameter_source(option)
    if explicit == ParameterSource.COMMANDLINE and not same:
        fail(f"{source}: the artifact was compiled with --{option} {kept}; --{option} {given} "
             f"applies to a checkpoint (recompile it: tgraph compile CHECKPOINT --{option} "
             f"{given})")  # fmt: skip


class _Printer:
    """A streamer: prints each new token as it comes (text with a tokenizer, else ids)."""

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        token = int(value.reshape(-1)[0])
        if self.tokenizer is None:
            click.echo(f"{token} ", nl=False)
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        click.echo(text[len(self.shown) :], nl=False)
        self.shown = text

    def end(self) -> None:
        click.echo("")
