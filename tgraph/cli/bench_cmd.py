"""``tgraph bench``: side-by-side timing, and per-pass impact with --per-pass."""

from __future__ import annotations

import os

import click

from tgraph.cli.app import (
    NON_NEGATIVE,
    POSITIVE,
    CliContext,
    fail,
    load_checkpoint,
    main,
    name_list,
    pass_ctx,
    progress,
)


@main.command()
@click.argument("checkpoint")
@click.option(
    "--backends",
    help="Comma-separated contenders: eager, torch.compile, ort-plain, ort-optimizer, "
    "ort-int8, openvino, openvino-bf16, tgraph-ort (or ort), tgraph-torch (or torch), "
    "tgraph-ort[int8], ... and on "
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
@click.option("--batch", default=1, show_default=True, type=POSITIVE, help="Batch size.")
@click.option(
    "--seq-len", type=POSITIVE,
    help="Sequence length  [default: 128, or a zoo model's longest if shorter]",
)  # fmt: skip
@click.option("--pipeline", default="default", show_default=True, help="tgraph pipeline.")
@click.option(
    "--pipelines", default="",
    help="Comma-separated pipelines: one tgraph-<backend>[<pipeline>] column per pipeline "
    "and tgraph backend (default,int8,bf16 -> tgraph-ort, tgraph-ort[int8], tgraph-ort[bf16]).",
)  # fmt: skip
@click.option("--repeats", type=POSITIVE, help="Timed rounds  [default: 20; 3 with --generate]")
@click.option(
    "--warmup", default=3, show_default=True, type=NON_NEGATIVE, help="Untimed rounds first."
)
@click.option("--threads", type=POSITIVE, help="Intra-op threads (default: torch's setting).")
@click.option("--json", "json_path", type=click.Path(), help="Also write the results as JSON.")
@click.option(
    "--per-pass", is_flag=True,
    help="Time the pipeline with each fusion pass switched off in turn, on the first "
    "tgraph-* backend of --backends.",
)  # fmt: skip
@click.option(
    "--generate", is_flag=True,
    help="Time greedy generation instead (a Hugging Face causal-LM directory): prefill ms, "
    "decode tok/s, peak RSS and agreement with eager against the generation peers, each in "
    "its own process (docs/generation.md, Benchmark). --backends then names generation "
    "contenders: eager, static-compile, optimum-intel, ov-genai, ort-genai, tgraph-ort, "
    "tgraph-torch, ort-genai[int4], ov-genai[int8], ov-genai[int4].",
)  # fmt: skip
@click.option(
    "--prompt-len", default=128, show_default=True, type=POSITIVE, help="--generate: prompt tokens."
)
@click.option(
    "--new-tokens", default=64, show_default=True, type=POSITIVE, help="--generate: new tokens."
)
@click.option(
    "--optimum-python", type=click.Path(dir_okay=False),
    help="--generate: the Python of a venv with optimum-intel (default: "
    "$TGRAPH_OPTIMUM_PYTHON, or this one if it has optimum-intel).",
)  # fmt: skip
@click.option(
    "--cache-dir", type=click.Path(file_okay=False),
    help="--generate: converted peer models  [default: ~/.cache/tgraph-bench/converted]",
)  # fmt: skip
@click.option(
    "--processes", default=1, show_default=True, type=POSITIVE,
    help="--generate: processes per contender, each loading the model; the rounds time all "
    "of them and the table adds each process's decode median.",
)  # fmt: skip
@pass_ctx
def bench(
    ctx: CliContext, checkpoint: str, backends: str | None, device: str, dtype: str, batch: int,
    seq_len: int, pipeline: str, pipelines: str, repeats: int | None, warmup: int,
    threads: int | None, json_path: str | None, per_pass: bool, generate: bool,
    prompt_len: int, new_tokens: int, optimum_python: str | None, cache_dir: str | None,
    processes: int,
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
      torchrun --nproc-per-node 2 -m tgraph bench llama2.tg --seq-len 128  (an artifact)
      tgraph bench ./hf-llama --generate --prompt-len 128 --new-tokens 64 --batch 1
    """
    import json

    if generate:
        if device != "cpu" or dtype != "fp32" or per_pass:
            fail("--generate runs on the CPU in fp32, without --per-pass", code=2)
        from tgraph.cli.bench_gen import run_generate_bench

        run_generate_bench(checkpoint, backends, batch, prompt_len, new_tokens, repeats or 3,
                           threads, cache_dir, optimum_python, json_path, processes)  # fmt: skip
        return
    repeats = repeats or 20

    from tgraph.bench import DEFAULT_CONTENDERS, GPU_DEFAULT_CONTENDERS

    if os.path.exists(os.path.join(checkpoint, "manifest.json")):  # a compiled artifact
        _bench_artifact(checkpoint, batch, seq_len or 128, repeats, warmup, threads, json_path)
        return
    if backends is None:
        backends = ",".join(GPU_DEFAULT_CONTENDERS if device == "cuda" else DEFAULT_CONTENDERS)
    seq_len = seq_len or _default_seq(checkpoint)
    if device == "cuda" or dtype != "fp32":
        if per_pass:
            fail("--per-pass runs on the CPU in fp32 only", code=2)
        _check_cuda(device)
    if per_pass:
        _bench_per_pass(ctx, checkpoint, backends, batch, seq_len, pipeline, repeats, warmup,
                        threads, json_path)  # fmt: skip
        return

    from tgraph.bench import bench as run_bench
    from tgraph.bench import format_table
    from tgraph.bench.contenders import check_names, expand_contenders
    from tgraph.passes.manager import parse_pipeline

    contenders = name_list("--backends", backends)
    columns = name_list("--pipelines", pipelines)
    for text in (pipeline, *columns):  # every name checked before the model loads
        parse_pipeline(text)
    check_names(expand_contenders(contenders, columns))
    loaded = load_checkpoint(checkpoint, batch, seq_len)
    with progress() as say:
        report = run_bench(loaded.model, loaded.example_inputs, name=loaded.name,
            contenders=contenders, repeats=repeats, warmup=warmup, pipeline=pipeline,
            pipelines=list(columns), threads=threads, device=device, dtype=dtype, progress=say,
        )  # fmt: skip
    _print_table(report, format_table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")


def _bench_artifact(
    directory: str, batch: int, seq: int, repeats: int, warmup: int, threads: int | None,
    json_path: str | None,
) -> None:  # fmt: skip
    """Time a compiled artifact; a sharded one on every rank torchrun started."""
    import json

    from tgraph.bench.sharded import bench_artifact

    report = bench_artifact(directory, batch, seq, repeats, warmup, threads)
    if report is None:  # not rank 0
        return
    click.echo(
        f"{directory}: {report['world']} rank(s) x {report['threads']} thread(s), "
        f"{batch}x{seq}: median {report['median_ms']:.3f} ms "
        f"(p25 {report['p25_ms']:.3f}, p75 {report['p75_ms']:.3f}); weights per rank "
        f"{report['weight_mib_per_rank']} MiB, peak RSS {report['peak_rss_mib_per_rank']} MiB; "
        f"collectives per forward {report['collectives_per_forward']}"
    )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


def _check_cuda(device: str) -> None:
    """Fail with one line before loading anything when CUDA is asked for but absent."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        fail(f"--device cuda: torch {torch.__version__} sees no CUDA GPU on this machine")


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
    ctx: CliContext, checkpoint: str, backends: str, batch: int, seq_len: int, pipeline: str,
    repeats: int, warmup: int, threads: int | None, json_path: str | None,
) -> None:  # fmt: skip
    import json

    from tgraph.bench.contenders import ALIASES
    from tgraph.debug.perpass import format_report, per_pass_bench
    from tgraph.passes.manager import parse_pipeline

    parse_pipeline(pipeline)
    names = [ALIASES.get(b, b) for b in name_list("--backends", backends)]
    chosen = [b[len("tgraph-") :] for b in names if b.startswith("tgraph-")]
    if not chosen:
        fail("--per-pass needs a tgraph-* backend in --backends (e.g. tgraph-ort)", code=2)
    loaded = load_checkpoint(checkpoint, batch, seq_len)
    with progress() as say:
        report = per_pass_bench(loaded.model, loaded.example_inputs, name=loaded.name,
            backend=chosen[0], pipeline=pipeline, repeats=repeats, warmup=warmup,
            threads=threads, progress=say,
        )  # fmt: skip
    click.echo(format_report(report))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")


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
