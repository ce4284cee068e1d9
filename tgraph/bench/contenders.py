"""The contenders of ``tgraph bench``: one :class:`Contender` record per peer, in one table.

A contender is a name, a builder (model and inputs -> a no-argument call), the optional
package it needs and the devices it runs on. The peers are fixed entries of
:data:`PEERS`; tgraph's own columns are made on demand from their names:
``tgraph-<backend>`` or ``tgraph-<backend>[<pipeline>]`` (``ort`` and ``torch`` alone are
short for ``tgraph-ort`` and ``tgraph-torch``, the contract's backend names).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tgraph.bench.exporters import feeds, flat_inputs, ort_session, plain_onnx


@dataclass
class Built:
    """A built contender: the call to time, compile stages (seconds) and a note."""

    run: Callable[[], Any]
    stages: dict[str, float] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True)
class Request:
    """What a builder gets: the model and inputs (already in the bench dtype and on its
    device), a scratch directory shared by the contenders, the thread count and the
    pipeline of bracket-less tgraph columns."""

    model: Any
    inputs: Any
    tmp: str
    threads: int
    pipeline: str = "default"
    device: str = "cpu"


@dataclass(frozen=True)
class Contender:
    name: str
    build: Callable[[Request], Built]
    needs: str | None = None  # the optional package (import name) it needs
    devices: tuple[str, ...] = ("cpu", "cuda")

    def skip_reason(self, device: str) -> str | None:
        """Why this contender does not run here (a missing package, a device), or None."""
        import importlib.util

        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed (pip install {self.needs})"
        if device not in self.devices:
            return f"a {'/'.join(self.devices)}-only peer here; not run with --device {device}"
        return None


# -- builders ------------------------------------------------------------------------------


def eager_call(model, inputs) -> Callable[[], Any]:
    args, kwargs = flat_inputs(inputs)
    return lambda: model(*args, **kwargs)


def tgraph_build(model, inputs, backend: str, pipeline: str, device: str = "cpu") -> Built:
    """tgraph.compile's model as a no-argument call, with its trace/optimize/lower times."""
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
    args, kwargs = flat_inputs(inputs)
    return Built(lambda: cm(*args, **kwargs), stages)


def _torch_compile(mode: str | None) -> Callable[[Request], Built]:
    def build(r: Request) -> Built:
        compiled = torch.compile(r.model, dynamic=False, mode=mode)
        args, kwargs = flat_inputs(r.inputs)
        # Compile now, not inside the timed rounds; reduce-overhead records its CUDA graph
        # on the calls after the first.
        for _ in range(3 if mode == "reduce-overhead" else 1):
            compiled(*args, **kwargs)
        return Built(lambda: compiled(*args, **kwargs))

    return build


def _optimized_onnx(model, path: str, tmp: str) -> str:
    from onnxruntime.transformers.optimizer import optimize_model

    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0
    with contextlib.redirect_stdout(io.StringIO()):
        opt = optimize_model(path, model_type="bert", num_heads=heads, hidden_size=hidden)
    out = os.path.join(tmp, "optimized.onnx")
    opt.save_model_to_file(out)
    return out


def _int8_onnx(path: str, tmp: str) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = os.path.join(tmp, "int8.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    return out


def _ort(variant: str) -> Callable[[Request], Built]:
    def build(r: Request) -> Built:
        path, note = plain_onnx(r.model, r.inputs, r.tmp)
        names = [i.name for i in ort_session(path, r.threads).get_inputs()]
        if variant == "optimizer":
            path = _optimized_onnx(r.model, path, r.tmp)
        elif variant == "int8":
            path = _int8_onnx(path, r.tmp)
        session = ort_session(path, r.threads)
        feed = {k: v for k, v in feeds(names, r.inputs).items() if k in names}
        return Built(lambda: [torch.from_numpy(x) for x in session.run(None, feed)], note=note)

    return build


def _openvino(precision: str) -> Callable[[Request], Built]:
    def build(r: Request) -> Built:
        import openvino as ov

        path, note = plain_onnx(r.model, r.inputs, r.tmp)
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"
        ):
            note = "this CPU has no bf16 support; OpenVINO runs the hint in fp32"
        compiled = core.compile_model(
            core.read_model(path), "CPU",
            {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": r.threads},
        )  # fmt: skip
        used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "bf16" and "bf16" not in used.lower():
            note = note or f"OpenVINO chose {used} for the bf16 hint"
        feed = feeds([p.get_any_name() for p in compiled.inputs], r.inputs)
        request = compiled.create_infer_request()

        def run():
            request.infer(feed)
            return [torch.from_numpy(request.get_output_tensor(i).data.copy())
                    for i in range(len(compiled.outputs))]  # fmt: skip

        return Built(run, note=note)

    return build


# -- the table -----------------------------------------------------------------------------

_CPU = ("cpu",)
PEERS: tuple[Contender, ...] = (
    Contender("eager", lambda r: Built(eager_call(r.model, r.inputs))),
    Contender("torch.compile", _torch_compile(None)),
    # On CPU mode="reduce-overhead" has no CUDA graphs to use: offered, never a default.
    Contender("torch.compile[reduce-overhead]", _torch_compile("reduce-overhead")),
    Contender("ort-plain", _ort("plain"), devices=_CPU),
    Contender("ort-optimizer", _ort("optimizer"), needs="onnxscript", devices=_CPU),
    Contender("ort-int8", _ort("int8"), devices=_CPU),
    Contender("openvino", _openvino("f32"), needs="openvino", devices=_CPU),
    Contender("openvino-bf16", _openvino("bf16"), needs="openvino", devices=_CPU),
)
_BY_NAME = {c.name: c for c in PEERS}
CONTENDERS = (*(c.name for c in PEERS), "tgraph-ort", "tgraph-torch")
DEFAULT_CONTENDERS = ("eager", "torch.compile", "ort-optimizer", "tgraph-ort", "tgraph-torch")
GPU_DEFAULT_CONTENDERS = (
    "eager",
    "torch.compile",
    "torch.compile[reduce-overhead]",
    "tgraph-torch",
)
# tgraph pipelines that take an fp32 model and lower its precision themselves.
CONVERTING_PIPELINES = ("bf16", "fp16", "int8", "int4")
# The contract's backend names stand for tgraph's columns.
ALIASES = {"ort": "tgraph-ort", "torch": "tgraph-torch", "reference": "tgraph-reference"}

_TGRAPH = re.compile(r"tgraph-(?P<backend>[a-z]+)(\[(?P<pipeline>[^\]]+)\])?")


def tgraph_pipeline(name: str) -> str | None:
    """The bracketed pipeline of a ``tgraph-<backend>[<pipeline>]`` name, else None."""
    m = _TGRAPH.fullmatch(name)
    return m.group("pipeline") if m else None


def lookup(name: str) -> Contender:
    """The contender of ``name``; ValueError listing the known names otherwise."""
    name = ALIASES.get(name, name)
    if name in _BY_NAME:
        return _BY_NAME[name]
    m = _TGRAPH.fullmatch(name)
    if m is None:
        raise ValueError(
            f"unknown contender {name!r}; known: {', '.join(_BY_NAME)}, "
            "tgraph-<backend>[<pipeline>] (ort and torch stand for tgraph-ort, tgraph-torch)"
        )
    backend, fixed = m.group("backend"), m.group("pipeline")

    def build(r: Request) -> Built:
        return tgraph_build(r.model, r.inputs, backend, fixed or r.pipeline, r.device)

    return Contender(name, build)


def expand_contenders(contenders: Sequence[str], pipelines: Sequence[str]) -> tuple[str, ...]:
    """Aliases resolved, and with pipelines ``default,int8`` every bracket-less tgraph column
    repeated per pipeline: ``tgraph-ort`` -> ``tgraph-ort``, ``tgraph-ort[int8]``."""
    out: list[str] = []
    for c in (ALIASES.get(c, c) for c in contenders):
        m = _TGRAPH.fullmatch(c)
        if m is None or m.group("pipeline") or not pipelines:
            out.append(c)
            continue
        out.extend(c if p == "default" else f"{c}[{p}]" for p in pipelines)
    return tuple(dict.fromkeys(out))


def check_names(contenders: Sequence[str]) -> None:
    """ValueError naming every unknown contender, before anything is built."""
    unknown = []
    for c in contenders:
        try:
            lookup(c)
        except ValueError:
            unknown.append(c)
    if unknown:
        raise ValueError(
            f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}, "
            "tgraph-<backend>[<pipeline>] (ort and torch stand for tgraph-ort, tgraph-torch)"
        )


def missing_package(name: str) -> str | None:
    """The optional package a peer needs when it is not installed, else None."""
    import importlib.util

    needs = _BY_NAME[name].needs if name in _BY_NAME else None
    if needs and importlib.util.find_spec(needs) is None:
        return needs
    return None
