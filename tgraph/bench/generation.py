"""Generation benchmark: prefill ms, decode tok/s, peak RSS and greedy agreement with eager,
for tgraph and its peers side by side, each contender in its own process.

One run per model: every contender's worker process (tgraph/bench/gen_worker.py) loads the model
once and serves every batch size; per batch size each contender first makes its untimed
warm-up calls (torch.compile compiles there), then all run interleaved, one
``generate`` call each per round, in a fresh random order every round, ``pause_s`` apart
and right after one short untimed call of their own (it wakes a thread pool that went to
sleep in the pause). A round also times the machine's memory read bandwidth (``x.sum()``
over 2 GiB in its own process, at the contenders' thread count), so the bound below comes
from the same conditions as the times.

Every call is greedy, exactly ``new_tokens`` new tokens per sequence (EOS ignored), on the
same random prompt ids (batch x prompt_len, seeded). Per call: prefill = time to the first
new token, decode = the rest, over ``new_tokens - 1`` steps; decode tok/s counts every
sequence of the batch. Reported per contender: medians over the rounds and their spread
(max - min), and:

- with ``processes`` > 1, every contender runs in that many processes of its own, each
  loading the model, and the rounds time all of them; the medians pool every process's
  calls and each process's own decode median is reported too. Two processes of the same
  contender can differ by more than the spread within one (where ORT placed the weights:
  5-7% between two sessions of one model in one process, docs/generation.md), so a
  single process per contender hides that part of the noise;

- bytes per decode step: the weights one step reads (all parameters but lookup-only
  embedding tables; low-bit peers: their packed weights and scales as stored) plus the KV
  cache it reads (fp32, batch x (prompt_len + new_tokens / 2) positions on average);
- % of bound: decode steps/s against read bandwidth / bytes per step; effective GB/s:
  bytes per step x steps/s;
- agreement: positions whose token equals eager's (of batch x new_tokens), and the first
  step where any sequence differs;
- RSS of the contender's process: after loading, and its peak by the end of the batch size
  (the process's own high-water mark: interpreter, libraries and model included).

Converted peer models (ONNX Runtime GenAI's model builder, OpenVINO IR through optimum-intel)
are cached under ``cache_dir`` keyed by the model directory's config and weight files, so
a second run converts nothing; see gen_artifacts.py for the commands.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tgraph.bench import gen_artifacts
from tgraph.bench.gen_process import Worker, WorkerError
from tgraph.bench.gen_table import format_table, markdown_summary, notes

FP32_CONTENDERS = (
    "eager", "static-compile", "optimum-intel", "ov-genai", "ort-genai", "tgraph-ort",
    "tgraph-torch",
)  # fmt: skip
LOWBIT_CONTENDERS = ("ort-genai[int4]", "ov-genai[int8]", "ov-genai[int4]")
CONTENDERS = (*FP32_CONTENDERS, *LOWBIT_CONTENDERS)
DEFAULT_CONTENDERS = FP32_CONTENDERS
__all__ = ["CONTENDERS", "GenReport", "GenResult", "bench_generate", "format_table",
           "markdown_summary", "notes", "prepare", "write_json"]  # fmt: skip
# tgraph-ort[int4]: tgraph.compile(..., pipeline="int4"); its worker counts the step graph's
# own weight bytes (packed as stored, gen_bytes.graph_weight_bytes).
_TGRAPH = re.compile(r"tgraph-(ort|torch)\[[^\]]+\]")
DEFAULT_CACHE = os.path.expanduser("~/.cache/tgraph-bench/converted")
MEMBW_BYTES = 2**31  # the bandwidth measurement's buffer: far past any cache
LOAD_TIMEOUT_S = 1800.0  # tgraph's compile, OpenVINO's model compile
CALL_TIMEOUT_S = 900.0  # one generate call (torch.compile's first one compiles)


@dataclass
class GenResult:
    """One contender at one batch size (times in ms, memory in MiB, bytes per step)."""

    name: str
    prefill_ms: float | None = None
    prefill_spread_ms: float | None = None
    decode_tok_s: float | None = None
    decode_spread_tok_s: float | None = None
    weight_bytes: int | None = None  # weights one decode step reads (None: fp32's, eager's count)
    bytes_per_step: int | None = None
    pct_of_bound: float | None = None
    effective_gbs: float | None = None
    agree: int | None = None  # positions equal to eager's
    first_mismatch: int | None = None  # first step where any row differs from eager
    load_s: float | None = None
    warmup_s: float | None = None  # the untimed calls before the rounds (compiles included)
    convert_s: float | None = None  # converted in this run (None: cached or none needed)
    rss_load_mb: float | None = None
    rss_peak_mb: float | None = None
    error: str | None = None
    note: str | None = None
    prefill_runs_ms: list[float] = field(default_factory=list)
    decode_runs_tok_s: list[float] = field(default_factory=list)
    decode_runs_process: list[int] = field(default_factory=list)  # which process made each
    process_decode_tok_s: list[float] = field(default_factory=list)  # each process's median
    tokens: list[list[int]] | None = None


@dataclass
class GenReport:
    model: str
    batch: int
    prompt_len: int
    new_tokens: int
    threads: int
    rounds: int
    membw_gbs: float | None
    membw_spread_gbs: float | None
    weight_bytes: int  # fp32 weights one decode step reads
    kv_bytes_per_token: int  # fp32 K and V of one position, all layers
    bytes_per_step: int  # weights + the step's mean KV read, fp32
    bound_tok_s: float | None  # batch x bandwidth / bytes_per_step
    results: list[GenResult]
    date: str
    load_avg: tuple[float, float] | None = None
    l3_bytes: int | None = None  # the CPU's last-level cache (Linux sysfs)
    processes: int = 1  # per contender

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for r in out["results"]:
            r.pop("tokens")
        return out


@dataclass
class _Contender:
    name: str
    python: str
    process: int = 0  # which of the contender's processes (``processes`` > 1)
    worker: Worker | None = None
    info: dict = field(default_factory=dict)
    error: str | None = None
    converted: gen_artifacts.Artifact | None = None


def check_names(contenders: Sequence[str]) -> None:
    unknown = [c for c in contenders if c not in CONTENDERS and not _TGRAPH.fullmatch(c)]
    if unknown:
        raise ValueError(f"unknown generation contender(s) {', '.join(unknown)}; known: "
                         f"{', '.join(CONTENDERS)} and tgraph-<backend>[<pipeline>]")  # fmt: skip


def bench_generate(
    model_dir: str,
    *,
    batches: Sequence[int] = (1,),
    prompt_len: int = 128,
    new_tokens: int = 64,
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
    rounds: int | Mapping[int, int] = 3,
    threads: int | None = None,
    cache_dir: str | None = None,
    optimum_python: str | None = None,
    membw_bytes: int | None = None,
    pause_s: float = 0.2,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    processes: int = 1,
) -> list[GenReport]:
    """Time ``generate`` of the causal LM in ``model_dir`` (a Hugging Face directory) for
    each contender, one report per batch size (see the module docstring).

    Args:
        model_dir: config.json plus weights; every contender loads it from here.
        batches: batch sizes, run one after the other by the same processes.
        prompt_len, new_tokens: prompt tokens per sequence; new tokens per sequence (>= 2).
        contenders: names from :data:`CONTENDERS`; eager always runs (the reference).
        rounds: timed rounds per batch size, or a {batch: rounds} mapping.
        threads: intra-op threads of every contender (default: os.cpu_count()).
        cache_dir: converted peer models (default :data:`DEFAULT_CACHE`).
        optimum_python: the Python that has optimum-intel (default: this one, if it has it).
        membw_bytes: buffer of the bandwidth measurement (default :data:`MEMBW_BYTES`).
        pause_s: idle time before each timed call.
        name: the model's name in the reports (default: the directory's name).
        progress: called with a short message at each step.
        processes: processes per contender, each loading the model (memory grows with it).
    """
    check_names(contenders)
    per_batch = {b: rounds.get(b, 0) if isinstance(rounds, Mapping) else rounds for b in batches}
    if new_tokens < 2 or prompt_len < 1 or min(per_batch.values(), default=0) < 1:
        raise ValueError("need new_tokens >= 2, prompt_len >= 1, a batch size and rounds >= 1 "
                         "for each batch size")  # fmt: skip
    if processes < 1:
        raise ValueError(f"processes must be >= 1 per contender, got {processes}")
    geometry = gen_artifacts.model_geometry(model_dir)
    if prompt_len + new_tokens > geometry.max_length:
        raise ValueError(f"prompt {prompt_len} + {new_tokens} new tokens exceeds the model's "
                         f"maximum length {geometry.max_length} ({model_dir}/config.json)")  # fmt: skip
    threads = threads or os.cpu_count() or 1
    say = progress or (lambda _m: None)
    load_before = _load_avg()
    pool = _replicated(_prepared(model_dir, contenders, cache_dir, optimum_python, say),
                       processes)  # fmt: skip
    cache_dir = cache_dir or DEFAULT_CACHE
    membw = _Contender("membw", sys.executable)
    label = name or os.path.basename(os.path.normpath(model_dir))
    try:
        base = {"model": model_dir, "threads": threads, "max_length": prompt_len + new_tokens,
                "membw_bytes": membw_bytes or MEMBW_BYTES}  # fmt: skip
        _start_all([*pool, membw], base, os.path.join(cache_dir, "logs", label), say)
        if pool[0].worker is None:
            raise RuntimeError(f"eager, the reference, did not load: {pool[0].error}")
        reports = []
        for batch in batches:
            ids = _prompt(batch, prompt_len, geometry.vocab_size)
            results = _run_batch(pool, membw, ids, new_tokens, per_batch[batch], pause_s, say)
            reports.append(_report(label, batch, prompt_len, new_tokens, threads,
                                   per_batch[batch], geometry,
                                   results, load_before, processes))  # fmt: skip
        return reports
    finally:
        for c in [*pool, membw]:
            if c.worker is not None:
                c.worker.close()


def prepare(
    model_dir: str, contenders: Sequence[str], *, cache_dir: str | None = None,
    optimum_python: str | None = None, progress: Callable[[str], None] | None = None,
) -> dict[str, str]:  # fmt: skip
    """Convert (or find cached) every converted model the contenders load, timing nothing:
    {contender: "ready", "converted in N s" or why not}, so the timed run converts nothing."""
    check_names(contenders)
    pool = _prepared(model_dir, contenders, cache_dir, optimum_python, progress or print)
    return {c.name: c.error or ("ready" if not c.converted or c.converted.convert_s is None
                                else f"converted in {c.converted.convert_s:.0f} s")
            for c in pool}  # fmt: skip


def _prepared(model_dir: str, contenders: Sequence[str], cache_dir: str | None,
              optimum_python: str | None, say: Callable[[str], None]) -> list[_Contender]:  # fmt: skip
    """eager first, then the other contenders, each with its converted model or its error."""
    names = ["eager", *[c for c in dict.fromkeys(contenders) if c != "eager"]]
    pool = [_Contender(c, gen_artifacts.python_for(c, optimum_python)) for c in names]
    for c in pool:
        _prepare(c, model_dir, cache_dir or DEFAULT_CACHE, optimum_python, say)
    return pool


def _replicated(pool: list[_Contender], processes: int) -> list[_Contender]:
    """Each contender ``processes`` times, its copies next to it (one converted model)."""
    return [c if i == 0 else replace(c, process=i) for c in pool for i in range(processes)]


def _prepare(c: _Contender, model_dir: str, cache_dir: str, optimum_python: str | None,
             say: Callable[[str], None]) -> None:  # fmt: skip
    """Find or make the converted model this contender loads (c.error says why not)."""
    try:
        c.converted = gen_artifacts.ensure(c.name, model_dir, cache_dir, optimum_python, say)
    except gen_artifacts.Unavailable as e:
        c.error = f"skipped: {e}"
        return
    except Exception as e:  # noqa: BLE001 - a conversion failing is a result
        c.error = f"conversion failed: {e}"


def _start_all(pool: list[_Contender], base: dict, logs: str, say: Callable[[str], None]) -> None:
    """Start every contender's process and load them all at once (loading is not timed)."""
    for c in pool:
        if c.error:
            continue
        artifact = c.converted.path if c.converted else None
        try:
            log = f"{c.name}.{c.process}.log" if c.process else f"{c.name}.log"
            c.worker = Worker(c.name, c.python, os.path.join(logs, log))
            c.worker.send({"op": "load", "contender": c.name, "artifact": artifact, **base})
        except WorkerError as e:
            c.error = f"failed to load: {e}"
        except OSError as e:  # the contender's Python cannot be started
            c.error = f"failed to start {c.python}: {e.strerror}"
    for c in pool:
        if c.worker is None:
            continue
        say(f"loading {c.name}" + (f" (process {c.process + 1})" if c.process else ""))
        try:
            reply = c.worker.receive(LOAD_TIMEOUT_S)
        except WorkerError as e:
            reply = {"error": str(e)}
        if "skip" in reply or "error" in reply:
            c.error = (f"skipped: {reply['skip']}" if "skip" in reply
                       else f"failed to load: {reply['error']}")  # fmt: skip
            c.worker.close()
            c.worker = None
        c.info = reply


def _broadcast(cs: list[_Contender], msg: dict, results: dict[str, GenResult]) -> dict:
    """Send ``msg`` to every live contender at once, then collect the answers (untimed
    work only: the contenders run side by side)."""
    sent = []
    for c in cs:
        if c.worker is None:
            continue
        try:
            c.worker.send(msg)
            sent.append(c)
        except WorkerError as e:
            _fail(c, str(e), results)
    replies = {}
    for c in sent:
        reply = _call(c, None, results)
        if reply is not None:
            replies[c.name] = reply
    return replies


def _prompt(batch: int, prompt_len: int, vocab: int) -> list[list[int]]:
    # Ids away from the special tokens at both ends of the vocabulary.
    rng = random.Random(1234 + batch)
    return [[rng.randrange(10, vocab - 10) for _ in range(prompt_len)] for _ in range(batch)]


def _run_batch(
    pool: list[_Contender], membw: _Contender, ids: list[list[int]], new_tokens: int,
    rounds: int, pause_s: float, say: Callable[[str], None],
) -> dict[str, GenResult]:  # fmt: skip
    batch = len(ids)
    results = {c.name: GenResult(c.name, error=c.error) for c in pool}
    live = [c for c in pool if c.worker is not None]
    _broadcast([*live, membw], {"op": "prompt", "ids": ids, "new_tokens": new_tokens}, results)
    say(f"batch {batch}: warming up")
    for c_name, reply in _broadcast(live, {"op": "warmup"}, results).items():
        results[c_name].warmup_s = reply["warmup_s"]
    bandwidth: list[float] = []
    order = random.Random(0)
    for i in range(rounds):
        say(f"batch {batch}: round {i + 1}/{rounds}")
        timed = [c for c in [*live, membw] if c.worker is not None]
        for c in order.sample(timed, len(timed)):
            time.sleep(pause_s)
            reply = _call(c, {"op": "run", "wake": True}, results)
            if reply is None:
                continue
            if c is membw:
                bandwidth.append(reply["gbs"])
                continue
            _record(results[c.name], reply, batch, new_tokens, c.process)
    for c in pool:
        r = results[c.name]
        if c.process:  # load time and RSS are the first process's (peaks: the highest)
            continue
        r.load_s, r.rss_load_mb = c.info.get("load_s"), c.info.get("rss_mb")
        r.note = "; ".join(n for n in (c.info.get("note"), r.note) if n) or None
        if c.converted is not None:
            r.convert_s, r.weight_bytes = c.converted.convert_s, c.converted.weight_bytes
        r.weight_bytes = c.info.get("weight_bytes", r.weight_bytes)
    results["membw"] = GenResult("membw", decode_runs_tok_s=bandwidth, error=membw.error)
    return results


def _call(c: _Contender, msg: dict | None, results: dict[str, GenResult]) -> dict | None:
    """One request (None: only the answer to one already sent); a failure stops the
    contender for the rest of the run."""
    assert c.worker is not None
    try:
        if msg is None:
            reply = c.worker.receive(CALL_TIMEOUT_S)
        else:
            reply = c.worker.ask(msg, CALL_TIMEOUT_S)
    except WorkerError as e:
        reply = {"error": str(e)}
    if "error" not in reply:
        return reply
    _fail(c, reply["error"], results)
    return None


def _fail(c: _Contender, error: str, results: dict[str, GenResult]) -> None:
    c.error = f"failed: {error}"
    if c.name in results:
        results[c.name].error = c.error
    if c.worker is not None:
        c.worker.close()
    c.worker = None


def _record(r: GenResult, reply: dict, batch: int, new_tokens: int, process: int = 0) -> None:
    decode_s = (reply["total_ms"] - reply["prefill_ms"]) / 1e3
    r.prefill_runs_ms.append(round(reply["prefill_ms"], 3))
    r.decode_runs_tok_s.append(round(batch * (new_tokens - 1) / decode_s, 3))
    r.decode_runs_process.append(process)
    peak = reply.get("rss_peak_mb")
    r.rss_peak_mb = peak if r.rss_peak_mb is None or peak is None else max(r.rss_peak_mb, peak)
    tokens = reply["tokens"]
    if any(len(row) != new_tokens for row in tokens):
        r.error = f"failed: returned {[len(row) for row in tokens]} new tokens, want {new_tokens}"
    elif r.tokens is None:
        r.tokens = tokens
    elif tokens != r.tokens and "differ between rounds" not in (r.note or ""):
        r.note = ((r.note + "; ") if r.note else "") + "tokens differ between rounds"


# -- summary -------------------------------------------------------------------------------


def _median_spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.median(values), max(values) - min(values)


def agreement(tokens: list[list[int]], ref: list[list[int]]) -> tuple[int, int | None]:
    """(positions equal to ``ref``, first step where any row differs or None)."""
    equal = sum(a == b for row, ref_row in zip(tokens, ref) for a, b in zip(row, ref_row))
    steps = [
        next((j for j, (a, b) in enumerate(zip(row, ref_row)) if a != b), None)
        for row, ref_row in zip(tokens, ref)
    ]
    differing = [s for s in steps if s is not None]
    return equal, min(differing) if differing else None


def _report(
    name: str, batch: int, prompt_len: int, new_tokens: int, threads: int, rounds: int,
    geometry: gen_artifacts.Geometry, results: dict[str, GenResult],
    load_before: float | None, processes: int = 1,
) -> GenReport:  # fmt: skip
    membw = results.pop("membw")
    gbs, gbs_spread = _median_spread(membw.decode_runs_tok_s)
    # Decode step j (1 .. new - 1) attends over prompt_len + j cached positions.
    kv_step = batch * geometry.kv_bytes_per_token * (prompt_len + new_tokens / 2)
    ref = results["eager"]
    fp32_weights = ref.weight_bytes or 0
    for r in results.values():
        r.prefill_ms, r.prefill_spread_ms = _median_spread(r.prefill_runs_ms)
        r.decode_tok_s, r.decode_spread_tok_s = _median_spread(r.decode_runs_tok_s)
        if processes > 1:
            r.process_decode_tok_s = _process_medians(r)
        if r.decode_tok_s is None or r.error:
            continue
        r.bytes_per_step = int((r.weight_bytes or fp32_weights) + kv_step)
        steps_s = r.decode_tok_s / batch
        r.effective_gbs = round(r.bytes_per_step * steps_s / 1e9, 2)
        if gbs:
            r.pct_of_bound = round(100 * r.effective_gbs / gbs, 1)
        if ref.tokens is not None and r.tokens is not None:
            r.agree, r.first_mismatch = agreement(r.tokens, ref.tokens)
    step = int(fp32_weights + kv_step)
    after = _load_avg()
    return GenReport(
        name, batch, prompt_len, new_tokens, threads, rounds, gbs, gbs_spread, fp32_weights,
        geometry.kv_bytes_per_token, step, batch * gbs * 1e9 / step if gbs else None,
        list(results.values()), time.strftime("%Y-%m-%d %H:%M"),
        (load_before, after) if load_before is not None and after is not None else None,
        _l3_bytes(), processes,
    )  # fmt: skip


def _process_medians(r: GenResult) -> list[float]:
    """Each process's median decode tok/s, in process order (processes with no call left out)."""
    runs: dict[int, list[float]] = {}
    for tok_s, process in zip(r.decode_runs_tok_s, r.decode_runs_process):
        runs.setdefault(process, []).append(tok_s)
    return [round(statistics.median(runs[p]), 3) for p in sorted(runs)]


def _l3_bytes() -> int | None:
    """Size of the cache at index 3 of CPU 0 (the L3 on x86 Linux), from sysfs."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
    except OSError:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def write_json(path: str, reports: list[GenReport], extra: dict | None = None) -> None:
    with open(path, "w") as f:
        json.dump({**(extra or {}), "reports": [r.to_json() for r in reports]}, f, indent=2)
        f.write("\n")
