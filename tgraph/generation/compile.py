"""``tgraph.compile`` of a causal LM: the plain forward and the generation step graph."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from torch import nn

from tgraph.ir import Graph

from .generator import Generator, StepProgram

_DEFAULT_MAX_LENGTH = 2048  # for a config that declares no position limit


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a class transformers' ``AutoModelForCausalLM`` maps to."""
    if not isinstance(model, nn.Module):
        return False
    mro = {c.__name__ for c in type(model).__mro__}
    if "PreTrainedModel" not in mro or "GenerationMixin" not in mro:
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


@contextlib.contextmanager
def _no_cache(lm: nn.Module) -> Iterator[None]:
    """The plain forward is traced without a KV cache (it would be a non-tensor output)."""
    before = getattr(lm.config, "use_cache", None)
    lm.config.use_cache = False
    try:
        yield
    finally:
        lm.config.use_cache = before


def generation_info(lm: nn.Module) -> dict[str, Any]:
    from tgraph.frontend.export import seq_limit

    gen_config = getattr(lm, "generation_config", None)

    def pick(name: str) -> Any:
        value = getattr(gen_config, name, None)
        return value if value is not None else getattr(lm.config, name, None)

    eos = pick("eos_token_id")
    return {
        "model": type(lm).__name__,
        "vocab_size": int(lm.get_input_embeddings().num_embeddings),
        "max_length": int(seq_limit(lm) or _DEFAULT_MAX_LENGTH),
        "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else eos,
        "pad_token_id": pick("pad_token_id"),
    }


def compile_step(lm: nn.Module, manager: Any) -> tuple[Graph, list]:
    """Trace the step graph of ``lm`` and run the pass pipeline on it (graph, pass records)."""
    from .capture import trace_step

    info = generation_info(lm)
    graph = trace_step(lm, info["max_length"])
    info["output_class"] = graph.meta.pop("output_class")
    graph.meta["generation"] = info
    graph, report = manager.run(graph)
    graph.meta["generation"] = info
    return graph, report


def lower_step(graph: Graph, backend: str, device: str, params: Any = None) -> StepProgram:
    """The step graph lowered for ``backend`` (ORT: the I/O-bound cache runner)."""
    if backend == "ort":
        from tgraph.backends.ort_cache import lower_step as ort_lower

        return StepProgram(graph, ort_lower(graph, device), backend, device)
    from tgraph.backends import get_backend
    from tgraph.backends.policy import onednn_linear

    if backend == "torch" and onednn_linear():  # inference only: oneDNN, weights packed once
        runner = get_backend(backend).lower(graph, device, params=params, pack_linears=True)
        runner.release_constants()  # the packed weights are the only copy the step holds
    else:
        runner = get_backend(backend).lower(graph, device, params=params)
    return StepProgram(graph, runner, backend, device)


# Options that inspect the plain forward at compile time: with any of them the model's own
# forward is traced and compiled too (and serves ``gen(...)``); otherwise the plain forward
# runs on the step graph (tgraph/generation/plain.py).
_EAGER_OPTIONS = ("dump_dir", "verify", "accuracy", "calibration")


def _plain(model: nn.Module, example_inputs: Any, options: dict[str, Any]) -> Any:
    from tgraph.api import compile_plain

    with _no_cache(model):
        return compile_plain(model, example_inputs, **options)


def compile_generator(model: nn.Module, example_inputs: Any, **options: Any) -> Generator:
    """``tgraph.compile`` for a causal LM (same options). The Generator keeps no reference
    to ``model``: the torch backend runs on its parameters, ORT on its own copy. A step that
    fails is reported by ``generate``; the plain forward is then compiled on its own."""
    from tgraph.api import check_target, model_tensors
    from tgraph.frontend import normalize_inputs
    from tgraph.passes.manager import PassManager

    backend, device = options["backend"], options["device"]
    check_target(backend, device)
    normalize_inputs(example_inputs)  # type check with a clear message
    dump_dir = options.get("dump_dir")  # the step graph's dumps go to DIR/step
    forward, instruments = None, []
    if options.get("calibration") is not None:
        # its fp32 graph yields the statistics; the step graph's layers have the same names
        # and reuse them (tgraph.calibration)
        from tgraph.calibration import Calibrator

        calibrator = Calibrator(options["calibration"])
        options = {**options, "calibration": calibrator}
        forward = _plain(model, example_inputs, options)
        instruments.append(Calibrator(hessians=calibrator.statistics(forward._graph)))
        calibrator.hessians = None
    elif any(options.get(k) for k in _EAGER_OPTIONS):
        forward = _plain(model, example_inputs, options)
    # the forward's pipeline has the accuracy budget's keep= list: the step keeps the same
    pipeline = forward.pipeline if forward is not None else options["pipeline"]
    manager = PassManager(pipeline, progress=options.get("progress"), instruments=instruments,
                          dump_dir=os.path.join(dump_dir, "step") if dump_dir else None)  # fmt: skip
    say = options.get("progress") or (lambda _msg: None)
    say("tracing the generation step (KV cache)")
    params = model_tensors(model) if backend == "torch" else None
    report: list = []
    try:
        graph, report = compile_step(model, manager)
        say(f"lowering the step to {backend}")
        step = lower_step(graph, backend, device, params)
        error = ""
    except Exception as e:  # noqa: BLE001 - the plain forward still works; generate reports it
        step, error = None, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    del params
    if step is None and forward is None:
        forward = _plain(model, example_inputs, options)
    return Generator(forward, step, error, report=report, pipeline=manager.pipeline)
