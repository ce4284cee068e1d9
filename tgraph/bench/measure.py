"""The measurement: build each contender, check it against eager, time all interleaved.

See the package docstring for what is measured and how memory is counted.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tgraph.bench.contenders import (
    CONVERTING_PIPELINES,
    DEFAULT_CONTENDERS,
    Built,
    Request,
    check_names,
    eager_call,
    expand_contenders,
    lookup,
    tgraph_pipeline,
)
from tgraph.bench.exporters import flat_inputs, tensor_kwargs
from tgraph.bench.results import BenchReport, BenchResult

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# -- outputs -------------------------------------------------------------------------------


def _main_tensors(out: Any) -> list[torch.Tensor]:
    import torch.utils._pytree as pytree

    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_error(out: Any, ref: Any) -> float:
    errs = [
        (a.float() - b.float()).abs().max().item()
        for a, b in zip(_main_tensors(out), _main_tensors(ref))
        if a.shape == b.shape
    ]
    return max(errs) if errs else float("nan")


def _max_magnitude(ref: Any) -> float:
    sizes = [t.float().abs().max().item() for t in _main_tensors(ref) if t.numel()]
    return max(sizes) if sizes else float("nan")


# -- memory -------------------------------------------------------------------------------


def rss_mb() -> float | None:
    """This process's resident set size in MiB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _settle_memory() -> None:
    """Free what can be freed and reset the peak-RSS mark to the current RSS (Linux)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- the benchmark ------------------------------------------------------------------------


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


@dataclass
class _Setup:
    """Where and in which dtype contenders run: the fp32 model (the reference) and the model
    in the bench dtype, with their inputs, on the bench device."""

    device: str
    dtype: str
    model: Any
    inputs: Any
    low_model: Any
    low_inputs: Any

    @classmethod
    def make(cls, model, inputs, device: str, dtype: str) -> _Setup:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {device!r}; valid devices: cpu, cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"--device cuda: torch {torch.__version__} sees no CUDA GPU on this machine"
            )
        if device == "cuda":
            model, inputs = model.to(device), _tree_to(inputs, device=device)
        if dtype == "fp32":
            return cls(device, dtype, model, inputs, model, inputs)
        low = copy.deepcopy(model).to(DTYPES[dtype])
        return cls(device, dtype, model, inputs, low, _tree_to(inputs, dtype=DTYPES[dtype]))

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def for_contender(self, name: str) -> tuple[Any, Any, str | None]:
        """(model, inputs, note): a pipeline that converts precision itself gets fp32."""
        pipeline = tgraph_pipeline(name)
        if self.dtype != "fp32" and pipeline in CONVERTING_PIPELINES:
            note = f"compiled from the fp32 model ({pipeline} converts it)"
            return self.model, self.inputs, note
        return self.low_model, self.low_inputs, None


def _tree_to(tree: Any, *, device: str | None = None, dtype: torch.dtype | None = None) -> Any:
    """Tensors moved to ``device``; floating ones also cast to ``dtype``."""
    import torch.utils._pytree as pytree

    def move(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to(device) if device else t

    return pytree.tree_map(move, tree)


def _cuda_memory(setup: _Setup) -> float | None:
    if not setup.cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def bench(
    model: torch.nn.Module,
    inputs: Any,
    *,
    name: str = "model",
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
    repeats: int = 20,
    warmup: int = 3,
    pipeline: str = "default",
    pipelines: Sequence[str] = (),
    threads: int | None = None,
    pause_s: float | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Build every contender, check outputs against eager, then time them interleaved.

    Args:
        model: the module, in eval mode (moved to the GPU in place for ``device="cuda"``).
        inputs: its example inputs (tuple of args or dict of kwargs); timed as given.
        name: the model's name in the report.
        contenders: names from :data:`tgraph.bench.contenders.PEERS`, or
            ``tgraph-<backend>[<pipeline>]`` (``ort``/``torch`` for short).
        repeats: timed rounds; warmup: untimed rounds before them.
        pipeline: the pipeline of ``tgraph-<backend>`` columns without brackets.
        pipelines: when given, every bracket-less ``tgraph-<backend>`` column is repeated
            once per pipeline (``default`` keeps the plain name): see expand_contenders.
        threads: intra-op threads for every contender (default: torch's setting).
        pause_s: idle time before each timed call, so that one contender's spinning
            worker threads do not slow the next one down (see time_interleaved); default
            0.1 s on CPU, none on CUDA.
        device: "cpu" or "cuda" (a RuntimeError when torch sees no GPU).
        dtype: "fp32", "fp16" or "bf16": the model's dtype for the contenders (see the
            module docstring); errors are always against eager fp32.
        progress: called with a short message at each step.
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    contenders = expand_contenders(contenders, pipelines)
    check_names(contenders)
    if "eager" not in contenders:
        contenders = ("eager", *contenders)
    say = progress or (lambda _msg: None)
    with torch.no_grad():
        setup = _Setup.make(model, inputs, device, dtype)
    if pause_s is None:
        pause_s = 0.0 if setup.cuda else 0.1
    results = {c: BenchResult(c) for c in contenders}
    runners: dict[str, Callable[[], Any]] = {}
    load_before = _load_avg()
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        ref = eager_call(setup.model, setup.inputs)()
        scale = _max_magnitude(ref)
        for c in contenders:
            reason = lookup(c).skip_reason(setup.device)
            if reason:
                results[c].error = f"skipped: {reason}"
                continue
            say(f"building {c}")
            built = _build_one(results[c], setup, ref, scale, tmp, threads, pipeline)
            if built is not None:
                runners[c] = built.run
        say("timing")
        sync = torch.cuda.synchronize if setup.cuda else None
        time_interleaved(runners, results, warmup, repeats, pause_s, sync)
    _summarize(results)
    batch, seq = _sizes(inputs)
    load_after = _load_avg()
    loads = (load_before, load_after) if load_before is not None else None
    gpu = torch.cuda.get_device_name() if setup.cuda else None
    return BenchReport(
        name, batch, seq, threads, repeats, list(results.values()), _peak_rss_mb() or 0.0,
        time.strftime("%Y-%m-%d"), loads, device, dtype, gpu,
    )  # fmt: skip


def _build_one(
    r: BenchResult, setup: _Setup, ref: Any, scale: float, tmp: str, threads: int, pipeline: str
) -> Built | None:
    """Build contender ``r.name``, run it once, record build time, error (also relative to
    ``scale``, the reference's largest magnitude) and memory."""
    model, inputs, note = setup.for_contender(r.name)
    _settle_memory()
    rss_before = rss_mb()
    gpu_before = _cuda_memory(setup)
    start = time.perf_counter()
    try:
        built = lookup(r.name).build(Request(model, inputs, tmp, threads, pipeline, setup.device))
        out = built.run()
    except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
        r.error = one_line(e)
        return None
    r.build_s = time.perf_counter() - start
    r.stages_s, r.note = built.stages, built.note or note
    r.max_abs_error = max_error(out, ref)
    r.rel_error = r.max_abs_error / scale if scale else None
    del out
    peak, after = _peak_rss_mb(), rss_mb()
    # A peak below the start means the mark was not reset (no /proc/self/clear_refs):
    # unknown, not zero.
    if rss_before is not None and peak is not None and after is not None:
        r.rss_peak_mb = round(peak - rss_before, 1) if peak >= rss_before else None
        r.rss_held_mb = round(after - rss_before, 1)
    if gpu_before is not None:
        r.cuda_peak_mb = round(torch.cuda.max_memory_allocated() / 2**20 - gpu_before, 1)
    return built


def time_interleaved(
    runners: dict[str, Callable[[], Any]], results: Mapping[str, Any], warmup: int,
    repeats: int, pause_s: float,
    sync: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """One timed call per contender per round (``results[name]`` has ``times_ms`` and
    ``error``: a BenchResult, or per-pass impact's Variant), in a fresh random order every round; on the
    CPU (``pause_s`` > 0) each timed call comes ``pause_s`` after the previous contender's
    last call and right after one untimed call of its own.

    The pause: ONNX Runtime's worker threads (and OpenMP's, with its default wait policy)
    stay busy for a while after a call returns, and whoever runs next pays for it: an ORT
    session of GPT-2 1x128 run 20 / 30 / 50 / 70 ms after an identical one took 231 / 211 /
    192 / 185 ms against 186-193 alone, and tgraph-torch right after tgraph-ort measured up
    to 10x slower than alone. The untimed call: after 100 ms idle a thread pool has gone to
    sleep, and waking it costs its next call (an eager forward of zoo:gpt-tiny, 1.0 ms back
    to back, took 11.8 ms after 100 ms idle with OpenMP's default policy, 2.1 ms with
    ``OMP_WAIT_POLICY=PASSIVE``), so the timed call measures what a caller in a loop gets.
    The random order makes sure no contender always follows the same one (a rotation does:
    the contender listed after another follows it in most rounds). ``sync``
    (``torch.cuda.synchronize``) runs before the clock starts and before it stops, so GPU
    work is inside the time."""
    names = list(runners)
    order = random.Random(0)
    for i in range(warmup + repeats):
        for c in order.sample(names, len(names)):
            if c not in runners:
                continue
            if sync:
                sync()
            try:
                if pause_s > 0:
                    time.sleep(pause_s)
                    runners[c]()  # untimed: wakes this contender's threads
                start = time.perf_counter()
                runners[c]()
                if sync:
                    sync()
            except Exception as e:  # noqa: BLE001 - a contender failing later is a result too
                results[c].error = f"failed on call {i + 2}: {one_line(e)}"
                results[c].times_ms.clear()
                del runners[c]
                continue
            if i >= warmup:
                results[c].times_ms.append((time.perf_counter() - start) * 1e3)


def _summarize(results: dict[str, BenchResult]) -> None:
    for r in results.values():
        if r.times_ms:
            r.median_ms = statistics.median(r.times_ms)
            q = statistics.quantiles(r.times_ms, n=4) if len(r.times_ms) > 1 else [r.median_ms] * 3
            r.iqr_ms = q[2] - q[0]
    eager = results["eager"].median_ms
    for r in results.values():
        if r.median_ms and eager:
            r.ratio_to_eager = r.median_ms / eager


def _sizes(inputs: Any) -> tuple[int, int]:
    args, kwargs = flat_inputs(inputs)
    tensors = list(args) + list(tensor_kwargs(kwargs).values())
    first = tensors[0] if tensors else torch.zeros(0)
    return (
        int(first.shape[0]) if first.dim() else 0,
        int(first.shape[1]) if first.dim() > 1 else 0,
    )
