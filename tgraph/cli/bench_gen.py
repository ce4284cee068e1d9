"""``tgraph bench CKPT --generate``: the generation benchmark (tgraph.bench.generation)."""

from __future__ import annotations

import click

from tgraph.cli.app import fail, progress


def run_generate_bench(
    checkpoint: str, backends: str | None, batch: int, prompt_len: int, new_tokens: int,
    rounds: int, threads: int | None, cache_dir: str | None, optimum_python: str | None,
    json_path: str | None, processes: int = 1,
) -> None:  # fmt: skip
    """Run it on one Hugging Face directory at one batch size; print the table."""
    import os

    from tgraph.bench import generation

    if not os.path.isdir(checkpoint):
        fail(f"--generate needs a Hugging Face causal-LM directory (config.json plus weights), "
             f"not {checkpoint!r}: the peers load the model from there", code=2)  # fmt: skip
    names = [b.strip() for b in (backends or ",".join(generation.DEFAULT_CONTENDERS)).split(",")]
    with progress() as say:
        reports = generation.bench_generate(
            checkpoint, batches=(batch,), prompt_len=prompt_len, new_tokens=new_tokens,
            contenders=[n for n in names if n], rounds=rounds, threads=threads,
            cache_dir=cache_dir, optimum_python=optimum_python, progress=say,
            processes=processes,
        )  # fmt: skip
    for report in reports:
        click.echo(generation.format_table(report))
    if json_path:
        generation.write_json(json_path, reports)
