"""Side-by-side latency benchmarks: tgraph against eager PyTorch and its peers.

Every contender is built first (build time recorded), its output checked against eager,
then all contenders run interleaved (one call each per round, rounds after warm-up) so
that machine noise hits everyone alike. Reported per contender: median and spread
(interquartile range) in ms, ratio to eager, max abs error against eager, build seconds.
A contender that cannot be built (torch.compile failing, a package missing) is reported
with the reason instead of a time.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

CONTENDERS = (
    "eager",
    "torch.compile",
    "ort-plain",
    "ort-optimizer",
    "openvino",
    "tgraph-ort",
    "tgraph-torch",
)
DEFAULT_CONTENDERS = ("eager", "torch.compile", "ort-optimizer", "tgraph-ort", "tgraph-torch")


@dataclass
class BenchResult:
    """One contender's measurements (times in milliseconds)."""

    name: str
    median_ms: float | None = None
    iqr_ms: float | None = None
    ratio_to_eager: float | None = None
    max_abs_error: float | None = None
    build_s: float | None = None
    error: str | None = None
    times_ms: list[float] = field(default_factory=list)


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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for r in out["results"]:
            r.pop("times_ms")
        return out


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


def _flat_inputs(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), inputs
    return tuple(inputs), {}


def _tensor_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


def _build_tgraph(model, inputs, backend: str, pipeline: str) -> Callable[[], Any]:
    import tgraph

    cm = tgraph.compile(model, inputs, backend=backend, pipeline=pipeline)
    args, kwargs = _flat_inputs(inputs)
    return lambda: cm(*args, **kwargs)


def _build_eager(model, inputs) -> Callable[[], Any]:
    args, kwargs = _flat_inputs(inputs)
    return lambda: model(*args, **kwargs)


def _build_torch_compile(model, inputs) -> Callable[[], Any]:
    compiled = torch.compile(model, dynamic=False)
    args, kwargs = _flat_inputs(inputs)
    compiled(*args, **kwargs)  # compile now, not inside the timed rounds
    return lambda: compiled(*args, **kwargs)


def export_onnx(model, inputs, path: str) -> list[str]:
    """A plain ONNX export of ``model`` (dynamic batch/seq); returns the input names."""
    args, kwargs = _flat_inputs(inputs)
    kwargs = _tensor_kwargs(kwargs)
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))]
    axes = {n: {0: "batch", 1: "seq"} for n, t in zip(names, list(args) + list(kwargs.values()))
            if t.dim() >= 2}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            model, args, path, kwargs=kwargs or None, input_names=names, dynamic_axes=axes,
            dynamo=False, opset_version=17,
        )  # fmt: skip
    return names


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _feeds(names: Sequence[str], inputs) -> dict[str, Any]:
    args, kwargs = _flat_inputs(inputs)
    tensors = list(args) + list(_tensor_kwargs(kwargs).values())
    return {n: t.numpy() for n, t in zip(names, tensors)}


def _build_ort(model, inputs, tmp: str, threads: int, optimizer: bool) -> Callable[[], Any]:
    path = os.path.join(tmp, "plain.onnx")
    if not os.path.exists(path):
        export_onnx(model, inputs, path)
    names = [i.name for i in _ort_session(path, threads).get_inputs()]
    if optimizer:
        from onnxruntime.transformers.optimizer import optimize_model

        config = getattr(model, "config", None)
        heads = getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0
        hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0
        with contextlib.redirect_stdout(io.StringIO()):
            opt = optimize_model(path, model_type="bert", num_heads=heads, hidden_size=hidden)
        path = os.path.join(tmp, "optimized.onnx")
        opt.save_model_to_file(path)
    session = _ort_session(path, threads)
    feeds = {k: v for k, v in _feeds(names, inputs).items() if k in names}
    return lambda: [torch.from_numpy(x) for x in session.run(None, feeds)]


def _build_openvino(model, inputs, tmp: str, threads: int) -> Callable[[], Any]:
    import openvino as ov

    path = os.path.join(tmp, "plain.onnx")
    if not os.path.exists(path):
        export_onnx(model, inputs, path)
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(path), "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads},
    )  # fmt: skip
    names = [p.get_any_name() for p in compiled.inputs]
    feeds = _feeds(names, inputs)
    request = compiled.create_infer_request()

    def run():
        request.infer(feeds)
        return [torch.from_numpy(request.get_output_tensor(i).data.copy())
                for i in range(len(compiled.outputs))]  # fmt: skip

    return run


def _builder(name: str, model, inputs, tmp: str, threads: int, pipeline: str):
    if name == "eager":
        return _build_eager(model, inputs)
    if name == "torch.compile":
        return _build_torch_compile(model, inputs)
    if name in ("ort-plain", "ort-optimizer"):
        return _build_ort(model, inputs, tmp, threads, optimizer=name == "ort-optimizer")
    if name == "openvino":
        return _build_openvino(model, inputs, tmp, threads)
    if name.startswith("tgraph-"):
        return _build_tgraph(model, inputs, name.split("-", 1)[1], pipeline)
    raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")


def bench(
    model: torch.nn.Module,
    inputs: Any,
    *,
    name: str = "model",
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
    repeats: int = 20,
    warmup: int = 3,
    pipeline: str = "default",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Build every contender, check outputs against eager, then time them interleaved."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise ValueError(f"unknown contender(s) {unknown}; known: {', '.join(CONTENDERS)}")
    if "eager" not in contenders:
        contenders = ("eager", *contenders)
    say = progress or (lambda _msg: None)
    results = {c: BenchResult(c) for c in contenders}
    runners: dict[str, Callable[[], Any]] = {}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        ref = _build_eager(model, inputs)()
        for c in contenders:
            say(f"building {c}")
            start = time.perf_counter()
            try:
                runners[c] = _builder(c, model, inputs, tmp, threads, pipeline)
                out = runners[c]()
            except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
                text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                results[c].error = f"{type(e).__name__}: {text[:160]}"
                runners.pop(c, None)
                continue
            results[c].build_s = time.perf_counter() - start
            results[c].max_abs_error = _max_error(out, ref)
        say("timing")
        for _ in range(warmup):
            for run in runners.values():
                run()
        for _ in range(repeats):
            for c, run in runners.items():
                start = time.perf_counter()
                run()
                results[c].times_ms.append((time.perf_counter() - start) * 1e3)
    for r in results.values():
        if r.times_ms:
            r.median_ms = statistics.median(r.times_ms)
            q = statistics.quantiles(r.times_ms, n=4) if len(r.times_ms) > 1 else [r.median_ms] * 3
            r.iqr_ms = q[2] - q[0]
    eager = results["eager"].median_ms
    for r in results.values():
        if r.median_ms and eager:
            r.ratio_to_eager = r.median_ms / eager
    batch, seq = _sizes(inputs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchReport(
        name, batch, seq, threads, repeats, list(results.values()), rss,
        time.strftime("%Y-%m-%d"),
    )  # fmt: skip


def _sizes(inputs: Any) -> tuple[int, int]:
    args, kwargs = _flat_inputs(inputs)
    tensors = list(args) + list(_tensor_kwargs(kwargs).values())
    first = tensors[0] if tensors else torch.zeros(0)
    return (
        int(first.shape[0]) if first.dim() else 0,
        int(first.shape[1]) if first.dim() > 1 else 0,
    )


def format_table(report: BenchReport) -> str:
    """A plain-text table (the CLI renders it with rich)."""
    head = f"{report.model}  batch {report.batch}  seq {report.seq_len}  threads {report.threads}"
    rows = [
        head,
        f"{'contender':<16}{'median ms':>11}{'iqr':>8}{'x eager':>9}{'max err':>11}{'build s':>9}",
    ]
    for r in report.results:
        if r.error:
            rows.append(f"{r.name:<16}  failed: {r.error}")
            continue
        rows.append(
            f"{r.name:<16}{r.median_ms:>11.3f}{r.iqr_ms:>8.3f}{r.ratio_to_eager:>9.2f}"
            f"{r.max_abs_error:>11.2e}{r.build_s:>9.2f}"
        )
    return "\n".join(rows)
