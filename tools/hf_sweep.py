"""Sweep every text, vision and audio architecture of the installed transformers through tgraph.

    python tools/hf_sweep.py --out ~/.cache/tgraph-sweep --write-docs   # run all, write the table
    python tools/hf_sweep.py --out /tmp/sweep --only bert,gpt2,vit      # a few; docs untouched
    python tools/hf_sweep.py --out DIR --table-only                     # rewrite docs from DIR

The architectures are transformers' base-model mapping (``MODEL_MAPPING_NAMES``) plus the
causal-LM classes of model types it lacks, so each architecture is counted once; multimodal
ones and those whose main input is not text, an image or audio are recorded as out of scope.
Each one runs in its own subprocess (forked from this one, so torch and transformers load
once; niced to 19, one thread, 6 GiB of address space) with a timeout, at most ``--jobs`` at a
time, in a fixed shuffled order (a sweep stopped part way still samples every family).
Results are cached in ``OUT/results.json``; a rerun redoes only the architectures that did
not pass (``--force`` redoes all). The coverage table goes into docs/models.md and the figure
into README.md, each between markers this tool rewrites, only when asked (``--write-docs``
or ``--table-only``) and only from a cache that holds every architecture: a partial sweep
into a scratch cache never overwrites the full table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hf_sweep_case import one_line, sweep_one  # noqa: E402

ROOT = os.path.dirname(HERE)
BEGIN, END = "<!-- hf-sweep:begin -->", "<!-- hf-sweep:end -->"
FIGURE_BEGIN, FIGURE_END = "<!-- hf-sweep-figure:begin -->", "<!-- hf-sweep-figure:end -->"
MEMORY_LIMIT = 6 * 2**30  # bytes of address space per model: some configs eat memory


def architectures() -> dict[str, str]:
    """model_type -> model class name, one per architecture."""
    from transformers.models.auto import modeling_auto as auto

    chosen: dict[str, str] = {}
    for mapping in (auto.MODEL_MAPPING_NAMES, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        for model_type, names in mapping.items():
            name = names if isinstance(names, str) else names[0]
            chosen.setdefault(model_type, name)
    return dict(sorted(chosen.items()))


def passed(record: dict) -> bool:
    return record.get("exports") == "yes" and not record.get("failure")


def settled(record: dict) -> bool:
    """A record a rerun keeps: a pass, or an architecture outside the sweep's scope."""
    return passed(record) or record.get("exports") == "skip"


def load_cache(path: str) -> dict[str, dict]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_cache(path: str, cache: dict[str, dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _child(model_type: str, class_name: str, out: str) -> None:
    """The forked subprocess of one architecture: lowest priority, bounded memory."""
    os.nice(19)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    torch.set_num_threads(1)
    start = time.time()
    try:
        record = sweep_one(model_type, class_name)
    except BaseException as e:  # noqa: BLE001 - the record says what broke the sweep itself
        record = {"arch": model_type, "class": class_name, "exports": "no",
                  "failure": f"sweep: {one_line(e)}"}  # fmt: skip
    record["seconds"] = round(time.time() - start, 1)
    with open(out, "w") as f:
        json.dump(record, f)
    os._exit(0)  # skip atexit handlers and thread joins inherited from the parent


def _finish(proc, model_type: str, class_name: str, out: str, seconds: float, killed: bool):
    if os.path.exists(out):
        with open(out) as f:
            return json.load(f)
    failure = (
        f"timeout after {seconds:.0f} s" if killed
        else f"crashed (exit code {proc.exitcode}; out of memory?)"
    )  # fmt: skip
    return {"arch": model_type, "class": class_name, "exports": "no", "failure": failure,
            "seconds": round(seconds, 1)}  # fmt: skip


def sweep(todo: dict[str, str], cache: dict, cache_path: str, jobs: int, timeout: float) -> None:
    """Run ``todo`` in forked subprocesses (torch and transformers imported once, here), at
    most ``jobs`` at a time, killing any that runs past ``timeout`` seconds."""
    fork = multiprocessing.get_context("fork")
    queue = list(todo.items())
    running: list[tuple] = []
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        while queue or running:
            while queue and len(running) < jobs:
                model_type, class_name = queue.pop(0)
                out = os.path.join(tmp, f"{model_type}.json")
                proc = fork.Process(target=_child, args=(model_type, class_name, out))
                proc.start()
                running.append((proc, model_type, class_name, out, time.time()))
            time.sleep(0.2)
            for item in list(running):
                proc, model_type, class_name, out, started = item
                elapsed = time.time() - started
                if proc.is_alive() and elapsed < timeout:
                    continue
                killed = proc.is_alive()
                if killed:
                    proc.kill()
                proc.join()
                running.remove(item)
                record = _finish(proc, model_type, class_name, out, elapsed, killed)
                cache[model_type] = record
                save_cache(cache_path, cache)
                done += 1
                status = "pass" if passed(record) else record.get("failure", "")[:100]
                print(f"[{done}/{len(todo)}] {model_type} ({record.get('seconds')} s): {status}",
                      flush=True)  # fmt: skip


# -- the table -------------------------------------------------------------------------------------


def _cell(record: dict, backend: str) -> str:
    value = record.get(backend)
    return "-" if value is None else ("ok" if value == "ok" else "fail")


def summary(records: list[dict]) -> tuple[int, int, int, int]:
    """(architectures run, in scope, exported, compile and match on ort and torch)."""
    in_scope = [r for r in records if r.get("exports") != "skip"]
    exported = [r for r in in_scope if r.get("exports") == "yes"]
    both = [r for r in exported if r.get("ort") == "ok" and r.get("torch") == "ok"]
    return len(records), len(in_scope), len(exported), len(both)


def figure_text(records: list[dict], total: int, version: str) -> str:
    run, in_scope, exported, both = summary(records)
    pct = 100.0 * both / exported if exported else 0.0
    scope_total = total - (run - in_scope)
    return (
        f"Of the {exported} text, vision and audio architectures of transformers {version} that "
        f"`torch.export` exports with dynamic batch and sequence, **{both} ({pct:.0f}%) compile "
        f"and match eager on both ORT and torch** (1e-4, at two sizes other than the traced "
        f"one). Swept so far: {in_scope} of the {scope_total} text, vision and audio "
        f"architectures in the auto mappings; {run - in_scope} more are multimodal or take "
        f"other inputs (out of scope)."
    )


def table_text(records: list[dict], total: int, version: str) -> str:
    lines = [
        figure_text(records, total, version),
        "",
        "| architecture | class | input | exports? | reference | ort | torch | first failure |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["arch"]):
        if r.get("exports") == "skip":
            continue
        failure = r.get("failure", "").replace("|", "\\|").replace("\n", " ")[:160]
        cells = [r["arch"], r["class"], r.get("modality", "?"), r.get("exports", "?"),
                 _cell(r, "reference"), _cell(r, "ort"), _cell(r, "torch"), failure]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    skipped = sorted(r["arch"] for r in records if r.get("exports") == "skip")
    lines += ["", f"Out of scope (multimodal or not text/vision/audio input), {len(skipped)}: "
              + ", ".join(skipped) + "."]  # fmt: skip
    return "\n".join(lines)


def rewrite_between(path: str, begin: str, end: str, body: str) -> None:
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: add the markers {begin} and {end} where the sweep writes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{body}\n{end}{tail}")


def missing(cache: dict, archs: dict[str, str]) -> list[str]:
    """The architectures ``cache`` holds no record of: a table from it would be partial."""
    return sorted(a for a in archs if a not in cache)


def write_docs(cache: dict, archs: dict[str, str], cache_path: str) -> None:
    """Rewrite the table in docs/models.md and the figure in README.md, or exit with one line
    when the cache lacks an architecture (the docs stay as they are)."""
    import transformers

    absent = missing(cache, archs)
    if absent:
        raise SystemExit(
            f"{cache_path} has no record of {len(absent)} of the {len(archs)} architectures "
            f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): the docs were not "
            "rewritten; sweep all of them into this cache first (no --only or --limit)"
        )
    records = [cache[a] for a in archs]
    version = transformers.__version__
    rewrite_between(os.path.join(ROOT, "docs", "models.md"), BEGIN, END,
                    table_text(records, len(archs), version))  # fmt: skip
    rewrite_between(os.path.join(ROOT, "README.md"), FIGURE_BEGIN, FIGURE_END,
                    figure_text(records, len(archs), version))  # fmt: skip


def out_of_scope(todo: dict[str, str], cache: dict) -> dict[str, str]:
    """Record the multimodal and non-text/vision/audio architectures without a subprocess;
    return the rest. Importing every model class here also means the forks inherit them."""
    import transformers
    from hf_sweep_config import modality

    rest = {}
    for model_type, class_name in todo.items():
        try:
            kind = modality(getattr(transformers, class_name))
        except Exception:  # noqa: BLE001 - the subprocess reports the import error
            kind = "?"
        if kind in ("multimodal", "other"):
            cache[model_type] = {"arch": model_type, "class": class_name, "modality": kind,
                                 "exports": "skip", "failure": f"{kind} input"}  # fmt: skip
        else:
            rest[model_type] = class_name
    return rest


def preload() -> None:
    """Import what every model needs once, before forking."""
    import tgraph  # noqa: F401
    from tgraph.backends import get_backend

    for backend in ("reference", "ort", "torch"):
        get_backend(backend)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/tgraph-hf-sweep"),
                    help="directory of the result cache (results.json)")  # fmt: skip
    ap.add_argument("--only", default="", help="comma-separated model types")
    ap.add_argument("--limit", type=int, default=0, help="run at most N architectures")
    ap.add_argument("--jobs", type=int, default=2, help="models run in parallel")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    ap.add_argument("--force", action="store_true", help="rerun cached passes too")
    ap.add_argument("--write-docs", action="store_true",
                    help="after the sweep, rewrite the table in docs/models.md and the figure in "
                    "README.md from the cache; refused unless it holds every architecture")  # fmt: skip
    ap.add_argument("--table-only", action="store_true",
                    help="sweep nothing, only rewrite the docs from the cache (as --write-docs)")  # fmt: skip
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cache_path = os.path.join(args.out, "results.json")
    cache = load_cache(cache_path)
    archs = architectures()
    if not args.table_only:
        only = [a for a in args.only.split(",") if a]
        unknown = [a for a in only if a not in archs]
        if unknown:
            raise SystemExit(f"unknown model types: {', '.join(unknown)}")
        todo = {a: c for a, c in archs.items() if (not only or a in only)
                and (args.force or only or not settled(cache.get(a, {})))}  # fmt: skip
        todo = out_of_scope(todo, cache)
        # A fixed shuffle: a sweep stopped part way still samples every family.
        order = list(todo.items())
        random.Random(0).shuffle(order)
        # Exported-but-failing ones first: the likeliest to have been fixed since.
        order.sort(key=lambda item: cache.get(item[0], {}).get("exports") != "yes")
        todo = dict(order)
        save_cache(cache_path, cache)
        if args.limit:
            todo = dict(list(todo.items())[: args.limit])
        preload()
        sweep(todo, cache, cache_path, args.jobs, args.timeout)
    if args.write_docs or args.table_only:
        write_docs(cache, archs, cache_path)
    run, in_scope, exported, both = summary([cache[a] for a in archs if a in cache])
    print(f"{both}/{exported} exported architectures pass on ort and torch "
          f"({in_scope} in scope, {run} swept)")  # fmt: skip


if __name__ == "__main__":
    main()
