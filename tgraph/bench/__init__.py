"""Side-by-side latency benchmarks: tgraph against eager PyTorch and its peers.

Every contender is built first (build time and memory recorded), its output checked
against eager, then all contenders run interleaved (one call each per round, rounds after
warm-up) so that machine noise hits everyone alike. Reported per contender: median and
spread (interquartile range) in ms, ratio to eager, max abs error against eager, build
seconds (for tgraph also trace / optimize / lower), and memory. A contender that cannot be
built (torch.compile failing, a package missing, an unknown pipeline) is reported with a
one-line reason instead of a time.

Contenders:
    eager, torch.compile, ort-plain (ONNX Runtime on a plain ``torch.onnx.export``),
    ort-optimizer (that export through ``onnxruntime.transformers.optimizer``), ort-int8
    (that export through ``onnxruntime.quantization.quantize_dynamic``), openvino (fp32),
    openvino-bf16 (``INFERENCE_PRECISION_HINT=bf16``), and ``tgraph-<backend>`` or
    ``tgraph-<backend>[<pipeline>]`` (for instance ``tgraph-ort[int8]``): tgraph.compile with
    that backend and pipeline.

CUDA (``device="cuda"``, see docs/gpu.md). The model and inputs move to the GPU; with
``dtype="fp16"`` or ``"bf16"`` every contender gets a copy of the model in that dtype (float
inputs too), except ``tgraph-<backend>[<pipeline>]`` columns whose pipeline converts an fp32
model itself (:data:`CONVERTING_PIPELINES`), which get the fp32 model. Errors are measured
against eager fp32 on the GPU and reported also relative to the reference's largest
magnitude, against the dtype's :data:`TOLERANCE`. Each timed call is bracketed by
``torch.cuda.synchronize()``, so a time is the call's whole latency, host overhead included.
Peers: eager, torch.compile, ``torch.compile[reduce-overhead]`` (CUDA graphs) and tgraph;
the ONNX Runtime and OpenVINO peers are CPU-only here and are skipped.

Memory. Contenders are built one after another in this process. Before each build the
garbage collector runs and glibc returns free heap to the system (``malloc_trim``); the
kernel's peak-RSS mark is reset (``/proc/self/clear_refs``, Linux). ``rss_peak_mb`` is the
highest RSS reached while building and first running the contender, minus the RSS before;
``rss_held_mb`` is what stays resident after the build. Both include everything the
contender allocated (ONNX exports, sessions, packed weights) and exclude the model and
inputs that every contender shares. torch.compile's compile workers run in other
processes and are not counted.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import io
import os
import random
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

PEERS = (
    "eager",
    "torch.compile",
    "ort-plain",
    "ort-optimizer",
    "ort-int8",
    "openvino",
    "openvino-bf16",
)
CONTENDERS = (*PEERS, "tgraph-ort", "tgraph-torch")
DEFAULT_CONTENDERS = ("eager", "torch.compile", "ort-optimizer", "tgraph-ort", "tgraph-torch")
# Peers that need an optional package; without it the column is skipped with a note.
OPTIONAL_PACKAGES = {
    "openvino": "openvino",
    "openvino-bf16": "openvino",
    "ort-optimizer": "onnxscript",
}

# Peers only the CUDA benchmark offers by default (on CPU, mode="reduce-overhead" has no
# CUDA graphs to use); and the CPU-only peers it skips.
GPU_PEERS = ("torch.compile[reduce-overhead]",)
GPU_DEFAULT_CONTENDERS = (
    "eager",
    "torch.compile",
    "torch.compile[reduce-overhead]",
    "tgraph-torch",
)
CPU_ONLY_PEERS = ("ort-plain", "ort-optimizer", "ort-int8", "openvino", "openvino-bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The largest error, relative to the largest magnitude of eager fp32's outputs, that a
# contender may show in each bench dtype (fp16/bf16: a few ulps carried through the layers).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}
# tgraph pipelines that take an fp32 model and lower its precision themselves.
CONVERTING_PIPELINES = ("bf16", "fp16", "int8", "int4")

_TGRAPH = re.compile(r"tgraph-(?P<backend>[a-z]+)(\[(?P<pipeline>[^\]]+)\])?")


@dataclass
class BenchResult:
    """One contender's measurements (times in milliseconds, memory in MiB)."""

    name: str
    median_ms: float | None = None
    iqr_ms: float | None = None
    ratio_to_eager: float | None = None
    max_abs_error: float | None = None
    build_s: float | None = None
    stages_s: dict[str, float] = field(default_factory=dict)
    rss_peak_mb: float | None = None
    rss_held_mb: float | None = None
    error: str | None = None
    note: str | None = None
    times_ms: list[float] = field(default_factory=list)
    # CUDA or low-precision runs only (left out of the JSON of a CPU fp32 run):
    rel_error: float | None = None  # max abs error / max |eager fp32 output|
    cuda_peak_mb: float | None = None  # GPU memory the build and first call allocated at peak


@dataclass
class BenchReport:
    model: str
    batch: int
    seq_len: int
    threads: int
    repeats: int
    results: list[BenchResult]
    peak_rss_mb: float
    date: str
    load_avg: tuple[float, float] | None = None  # 1-minute load average before and after
    device: str = "cpu"
    dtype: str = "fp32"
    gpu: str | None = None  # the CUDA device's name

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        plain = self.device == "cpu" and self.dtype == "fp32"  # the CPU format, unchanged
        for r in out["results"]:
            r.pop("times_ms")
            if plain:
                r.pop("rel_error")
                r.pop("cuda_peak_mb")
        if plain:
            for key in ("device", "dtype", "gpu"):
                out.pop(key)
        else:
            out["tolerance"] = self.tolerance
        return out


def expand_contenders(contenders: Sequence[str], pipelines: Sequence[str]) -> tuple[str, ...]:
    """``tgraph-ort`` with pipelines ``default,int8`` -> ``tgraph-ort``, ``tgraph-ort[int8]``."""
    out: list[str] = []
    for c in contenders:
        m = _TGRAPH.fullmatch(c)
        if m is None or m.group("pipeline") or not pipelines:
            out.append(c)
            continue
        for p in pipelines:
            out.append(c if p == "default" else f"{c}[{p}]")
    return tuple(dict.fromkeys(out))


def _check_names(contenders: Sequence[str]) -> None:
    known = (*PEERS, *GPU_PEERS)
    unknown = [c for c in contenders if c not in known and not _TGRAPH.fullmatch(c)]
    if unknown:
        raise ValueError(
            f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}, "
            f"{', '.join(GPU_PEERS)} and tgraph-<backend>[<pipeline>]"
        )


# -- outputs -------------------------------------------------------------------------------


def _main_tensors(out: Any) -> list[torch.Tensor]:
    import torch.utils._pytree as pytree

    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _max_error(out: Any, ref: Any) -> float:
    errs = [
        (a.float() - b.float()).abs().max().item()
        for a, b in zip(_main_tensors(out), _main_tensors(ref))
        if a.shape == b.shape
    ]
    return max(errs) if errs else float("nan")


def _max_magnitude(ref: Any) -> float:
    sizes = [t.float().abs().max().item() for t in _main_tensors(ref) if t.numel()]
    return max(sizes) if sizes else float("nan")


def _flat_inputs(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    return tuple(inputs), {}


def _tensor_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


# -- builders ------------------------------------------------------------------------------


@dataclass
class _Built:
    run: Callable[[], Any]
    stages: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    keep: Any = None  # objects that must live as long as the runner


def _build_tgraph(model, inputs, backend: str, pipeline: str) -> Callable[[], Any]:
    """tgraph.compile's model as a no-argument call (also used by ``tgraph.debug.perpass``)."""
    return _make_tgraph(model, inputs, backend, pipeline).run


def _make_tgraph(model, inputs, backend: str, pipeline: str, device: str = "cpu") -> _Built:
    import tgraph

    stages: dict[str, float] = {}
    clock = {"stage": "", "t": time.perf_counter()}

    def progress(message: str) -> None:
        # compile() reports "tracing ...", "pass i/n: ...", "lowering ..." as it goes.
        now = time.perf_counter()
        if clock["stage"]:
            stages[clock["stage"]] = stages.get(clock["stage"], 0.0) + now - clock["t"]
        clock["stage"] = message.split()[0].replace("pass", "optimize")
        clock["t"] = now

    cm = tgraph.compile(
        model, inputs, backend=backend, device=device, pipeline=pipeline, progress=progress
    )
    progress("done")
    stages = {k.replace("tracing", "trace").replace("lowering", "lower"): round(v, 3)
              for k, v in stages.items()}  # fmt: skip
    args, kwargs = _flat_inputs(inputs)
    return _Built(lambda: cm(*args, **kwargs), stages)


def _build_eager(model, inputs) -> Callable[[], Any]:
    args, kwargs = _flat_inputs(inputs)
    return lambda: model(*args, **kwargs)


def _build_torch_compile(model, inputs, mode: str | None = None) -> _Built:
    compiled = torch.compile(model, dynamic=False, mode=mode)
    args, kwargs = _flat_inputs(inputs)
    # Compile now, not inside the timed rounds; reduce-overhead records its CUDA graph on
    # the calls after the first.
    for _ in range(3 if mode == "reduce-overhead" else 1):
        compiled(*args, **kwargs)
    return _Built(lambda: compiled(*args, **kwargs))


def export_onnx(model, inputs, path: str) -> list[str]:
    """A plain ONNX export of ``model`` (batch and sequence dims dynamic); returns the input
    names. torch's own exporter (torch.export-based, ``dynamo=True``) first, as a user would
    run it today; the legacy TorchScript exporter when that fails."""
    args, kwargs = _flat_inputs(inputs)
    kwargs = _tensor_kwargs(kwargs)
    tensors = list(args) + list(kwargs.values())
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))]
    # Grad on: nn.TransformerEncoder's inference fast path (one fused ATen op that ONNX
    # cannot express) is taken only without grad.
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1], torch.enable_grad(), warnings.catch_warnings(), _quiet_logs():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, _widen(args), kwargs=_widen(kwargs) or None, dynamo=True, input_names=names,
                dynamic_shapes=_export_dims(model, args, kwargs), verbose=False,
            )  # fmt: skip
            program.save(path)
            return names
        except Exception:  # noqa: BLE001 - fall back to the exporter that still works
            pass
        axes = {n: {0: "batch", 1: "seq"} for n, t in zip(names, tensors) if t.dim() >= 2}
        torch.onnx.export(
            model, args, path, kwargs=kwargs or None, input_names=names, dynamic_axes=axes,
            dynamo=False, opset_version=17,
        )  # fmt: skip
    return names


@contextlib.contextmanager
def _quiet_logs():
    """The exporter logs (torchvision missing, ...) through handlers made before the
    redirect; raise its loggers' level for the export instead."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _widen(tree: Any) -> Any:
    """Size-1 batch/sequence dims at size 2: torch.export specializes size-1 dims."""
    import torch.utils._pytree as pytree

    def widen(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        for d in range(min(t.dim(), 2 if t.dim() in (2, 3) else 1)):
            if t.shape[d] == 1:
                t = t.repeat_interleave(2, dim=d)
        return t

    return pytree.tree_map(widen, tree)


def _export_dims(model, args: tuple, kwargs: dict) -> Any:
    """torch.export dynamic shapes: dim 0 is the batch, dim 1 of rank 2-3 inputs the
    sequence (bounded by the config's position table, where it has one)."""
    from torch.export import Dim

    config = getattr(model, "config", None)
    limit = next((getattr(config, f) for f in ("max_position_embeddings", "n_positions",
                  "block_size", "max_seq") if isinstance(getattr(config, f, None), int)), None)  # fmt: skip
    batch, seq = Dim("batch"), Dim("seq", max=limit) if limit else Dim("seq")

    def spec(t: torch.Tensor) -> dict | None:
        if t.dim() == 0:
            return None
        return {0: batch, 1: seq} if t.dim() in (2, 3) else {0: batch}

    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(t) for t in args)


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _feeds(names: Sequence[str], inputs) -> dict[str, Any]:
    args, kwargs = _flat_inputs(inputs)
    tensors = list(args) + list(_tensor_kwargs(kwargs).values())
    return {n: t.numpy() for n, t in zip(names, tensors)}


def _plain_onnx(model, inputs, tmp: str) -> str:
    """The plain export, shared by the ORT and OpenVINO peers (made once per bench)."""
    path = os.path.join(tmp, "plain.onnx")
    if not os.path.exists(path):
        export_onnx(model, inputs, path)
    return path


def _build_ort(model, inputs, tmp: str, threads: int, variant: str) -> _Built:
    path = _plain_onnx(model, inputs, tmp)
    names = [i.name for i in _ort_session(path, threads).get_inputs()]
    if variant == "optimizer":
        from onnxruntime.transformers.optimizer import optimize_model

        config = getattr(model, "config", None)
        heads = getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0
        hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0
        with contextlib.redirect_stdout(io.StringIO()):
            opt = optimize_model(path, model_type="bert", num_heads=heads, hidden_size=hidden)
        path = os.path.join(tmp, "optimized.onnx")
        opt.save_model_to_file(path)
    elif variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = os.path.join(tmp, "int8.onnx")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantize_dynamic(path, out, weight_type=QuantType.QInt8)
        path = out
    session = _ort_session(path, threads)
    feeds = {k: v for k, v in _feeds(names, inputs).items() if k in names}
    return _Built(lambda: [torch.from_numpy(x) for x in session.run(None, feeds)])


def _build_openvino(model, inputs, tmp: str, threads: int, precision: str) -> _Built:
    import openvino as ov

    path = _plain_onnx(model, inputs, tmp)
    core = ov.Core()
    note = None
    if precision == "bf16":
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            note = "this CPU has no bf16 support; OpenVINO runs the hint in fp32"
    compiled = core.compile_model(
        core.read_model(path), "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads},
    )  # fmt: skip
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if precision == "bf16" and "bf16" not in used.lower():
        note = note or f"OpenVINO chose {used} for the bf16 hint"
    names = [p.get_any_name() for p in compiled.inputs]
    feeds = _feeds(names, inputs)
    request = compiled.create_infer_request()

    def run():
        request.infer(feeds)
        return [torch.from_numpy(request.get_output_tensor(i).data.copy())
                for i in range(len(compiled.outputs))]  # fmt: skip

    return _Built(run, note=note)


def _builder(
    name: str, model, inputs, tmp: str, threads: int, pipeline: str, device: str = "cpu"
) -> _Built:
    if name == "eager":
        return _Built(_build_eager(model, inputs))
    if name == "torch.compile":
        return _build_torch_compile(model, inputs)
    if name == "torch.compile[reduce-overhead]":
        return _build_torch_compile(model, inputs, mode="reduce-overhead")
    if name in ("ort-plain", "ort-optimizer", "ort-int8"):
        return _build_ort(model, inputs, tmp, threads, variant=name.split("-", 1)[1])
    if name in ("openvino", "openvino-bf16"):
        return _build_openvino(model, inputs, tmp, threads, "bf16" if "bf16" in name else "f32")
    m = _TGRAPH.fullmatch(name)
    if m:
        backend, pipeline = m.group("backend"), m.group("pipeline") or pipeline
        return _make_tgraph(model, inputs, backend, pipeline, device)
    raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")


def missing_package(name: str) -> str | None:
    """The optional package a peer needs when it is not installed, else None."""
    import importlib.util

    package = OPTIONAL_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        return package
    return None


# -- memory --------------------------------------------------------------------------------


def _rss_mb() -> float | None:
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


# -- the benchmark -------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
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
        m = _TGRAPH.fullmatch(name)
        if self.dtype != "fp32" and m and m.group("pipeline") in CONVERTING_PIPELINES:
            note = f"compiled from the fp32 model ({m.group('pipeline')} converts it)"
            return self.model, self.inputs, note
        return self.low_model, self.low_inputs, None

    def skip_reason(self, name: str) -> str | None:
        missing = missing_package(name)
        if missing:
            return f"{missing} is not installed (pip install {missing})"
        if self.cuda and name in CPU_ONLY_PEERS:
            return "a CPU-only peer here; not run with --device cuda"
        return None


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
        contenders: names from :data:`CONTENDERS` or :data:`GPU_PEERS`, or
            ``tgraph-<backend>[<pipeline>]``.
        repeats: timed rounds; warmup: untimed rounds before them.
        pipeline: the pipeline of ``tgraph-<backend>`` columns without brackets.
        pipelines: when given, every bracket-less ``tgraph-<backend>`` column is repeated
            once per pipeline (``default`` keeps the plain name): see expand_contenders.
        threads: intra-op threads for every contender (default: torch's setting).
        pause_s: idle time before each timed call, so that one contender's spinning
            worker threads do not slow the next one down (see _time_interleaved); default
            0.1 s on CPU, none on CUDA.
        device: "cpu" or "cuda" (a RuntimeError when torch sees no GPU).
        dtype: "fp32", "fp16" or "bf16": the model's dtype for the contenders (see the
            module docstring); errors are always against eager fp32.
        progress: called with a short message at each step.
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    contenders = expand_contenders(contenders, pipelines)
    _check_names(contenders)
    if "eager" not in contenders:
        contenders = ("eager", *contenders)
    say = progress or (lambda _msg: None)
    with torch.no_grad():
        setup = _Setup.make(model, inputs, device, dtype)
    if pause_s is None:
        pause_s = 0.0 if setup.cuda else 0.1
    results = {c: BenchResult(c) for c in contenders}
    runners: dict[str, Callable[[], Any]] = {}
    keep: list[_Built] = []
    load_before = _load_avg()
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        ref = _build_eager(setup.model, setup.inputs)()
        scale = _max_magnitude(ref)
        for c in contenders:
            reason = setup.skip_reason(c)
            if reason:
                results[c].error = f"skipped: {reason}"
                continue
            say(f"building {c}")
            built = _build_one(results[c], setup, ref, scale, tmp, threads, pipeline)
            if built is not None:
                runners[c] = built.run
                keep.append(built)
        say("timing")
        sync = torch.cuda.synchronize if setup.cuda else None
        _time_interleaved(runners, results, warmup, repeats, pause_s, sync)
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
) -> _Built | None:
    """Build contender ``r.name``, run it once, record build time, error (also relative to
    ``scale``, the reference's largest magnitude) and memory."""
    model, inputs, note = setup.for_contender(r.name)
    _settle_memory()
    rss_before = _rss_mb()
    gpu_before = _cuda_memory(setup)
    start = time.perf_counter()
    try:
        built = _builder(r.name, model, inputs, tmp, threads, pipeline, setup.device)
        out = built.run()
    except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
        r.error = _one_line(e)
        return None
    r.build_s = time.perf_counter() - start
    r.stages_s, r.note = built.stages, built.note or note
    r.max_abs_error = _max_error(out, ref)
    r.rel_error = r.max_abs_error / scale if scale else None
    del out
    peak, after = _peak_rss_mb(), _rss_mb()
    if rss_before is not None and peak is not None and after is not None:
        r.rss_peak_mb = round(max(peak - rss_before, 0.0), 1)
        r.rss_held_mb = round(after - rss_before, 1)
    if gpu_before is not None:
        r.cuda_peak_mb = round(torch.cuda.max_memory_allocated() / 2**20 - gpu_before, 1)
    return built


def _time_interleaved(
    runners, results, warmup: int, repeats: int, pause_s: float,
    sync: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """One timed call per contender per round, in a fresh random order every round; on the
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
                results[c].error = f"failed on call {i + 2}: {_one_line(e)}"
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
    args, kwargs = _flat_inputs(inputs)
    tensors = list(args) + list(_tensor_kwargs(kwargs).values())
    first = tensors[0] if tensors else torch.zeros(0)
    return (
        int(first.shape[0]) if first.dim() else 0,
        int(first.shape[1]) if first.dim() > 1 else 0,
    )


COLUMNS = ("contender", "median ms", "iqr", "x eager", "max err", "build s", "peak MiB")


def table_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """One row of :data:`COLUMNS` per contender (a failed one: name, "failed", reason)."""
    rows = []
    for r in report.results:
        if r.error:
            rows.append((r.name, "failed" if not r.error.startswith("skipped") else "skipped",
                         r.error))  # fmt: skip
            continue
        build = f"{r.build_s:.2f}"
        if r.stages_s:
            build += " (" + " + ".join(f"{k} {v:.1f}" for k, v in r.stages_s.items()) + ")"
        rows.append((
            r.name, f"{r.median_ms:.3f}", f"{r.iqr_ms:.3f}", f"{r.ratio_to_eager:.2f}",
            f"{r.max_abs_error:.1e}", build, _memory_cell(report, r),
        ))  # fmt: skip
    return rows


def _memory_cell(report: BenchReport, r: BenchResult) -> str:
    peak = r.cuda_peak_mb if report.device == "cuda" else r.rss_peak_mb
    return "" if peak is None else f"{peak:.0f}"


def notes(report: BenchReport) -> list[str]:
    lines = _device_notes(report)
    lines += [f"{r.name}: {r.note}" for r in report.results if r.note and not r.error]
    if report.load_avg:
        before, after = report.load_avg
        lines.append(f"load average {before:.2f} before, {after:.2f} after "
                     f"({os.cpu_count()} CPUs): a loaded machine widens the spread")  # fmt: skip
    return lines


def _device_notes(report: BenchReport) -> list[str]:
    """For CUDA or low-precision runs: what the errors and memory column mean, and who is
    over the dtype's tolerance."""
    if report.device == "cpu" and report.dtype == "fp32":
        return []
    where = f"{report.device} ({report.gpu})" if report.gpu else report.device
    lines = [
        f"{where}, model in {report.dtype}: max err is against eager fp32; tolerance "
        f"{report.tolerance:g} of the largest |output|"
        + ("; peak MiB is GPU memory" if report.device == "cuda" else "")
    ]
    for r in report.results:
        if r.rel_error is not None and not r.error and r.rel_error > report.tolerance:
            lines.append(f"{r.name}: relative error {r.rel_error:.1e} is over the tolerance")
    return lines


def format_table(report: BenchReport) -> str:
    """A plain-text table (the CLI renders it with rich on a terminal)."""
    head = f"{report.model}  batch {report.batch}  seq {report.seq_len}  threads {report.threads}"
    lines = [head, f"{'contender':<20}{'median ms':>11}{'iqr':>9}{'x eager':>9}{'max err':>10}"
                   f"{'peak MiB':>10}  build s"]  # fmt: skip
    for row in table_rows(report):
        if row[1] in ("failed", "skipped"):
            lines.append(f"{row[0]:<20}  {row[1]}: {row[2]}")
            continue
        name, med, iqr, ratio, err, build, peak = row
        lines.append(f"{name:<20}{med:>11}{iqr:>9}{ratio:>9}{err:>10}{peak:>10}  {build}")
    lines += notes(report)
    return "\n".join(lines)
