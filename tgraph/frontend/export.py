"""The export half of tracing: example inputs normalized, dynamic batch and sequence dims
planned, torch.export run (and rerun with refined dims when it asks for them)."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import Dim, ExportedProgram

from .defaults import input_indices, probe_defaults


class FrontendError(Exception):
    """tracing failed: names the op and the module it came from."""


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Example inputs as (args, kwargs): a tensor, a tuple/list of args, or a dict of kwargs."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a tensor, a tuple of args or a dict of kwargs, "
        f"got {type(example_inputs).__name__}"
    )


def _dynamic_dims(t: Any) -> tuple[int, ...]:
    """Which dims of an example tensor are symbolic: batch (0) and sequence (1)."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return ()
    # (B, T) token ids / masks and (B, T, C) features have a sequence dim; images do not.
    if t.dim() == 2 or (t.dim() == 3 and t.is_floating_point()):
        return (0, 1)
    return (0,)


class _DimPlan:
    """Dynamic-shape specs for torch.export.

    ``shared=True`` gives every input's dim 0 one ``Dim("batch")`` and groups sequence
    dims by their example size, so export knows that the batch of ``memory`` is the batch
    of ``tgt``. ``shared=False`` uses ``Dim.AUTO`` (export decides what is dynamic), the
    fallback when the model pins a dim the shared plan called dynamic.
    """

    def __init__(self, shared: bool, seq_max: int | None = None):
        self.shared = shared
        self.seq_max = seq_max
        self.seq_dims: dict[int, Any] = {}
        self.batch = Dim("batch") if shared else Dim.AUTO

    def _seq(self, size: int) -> Any:
        if not self.shared:
            return Dim.AUTO
        if size not in self.seq_dims:
            name = f"seq{len(self.seq_dims)}"
            fits = self.seq_max is not None and size <= self.seq_max
            self.seq_dims[size] = Dim(name, max=self.seq_max) if fits else Dim(name)
        return self.seq_dims[size]

    def spec(self, t: Any) -> Any:
        dims = _dynamic_dims(t)
        if not dims:
            return None
        return {d: self.batch if d == 0 else self._seq(int(t.shape[d])) for d in dims}


# Config fields that name the longest input sequence (Hugging Face and zoo models).
SEQ_LIMIT_FIELDS = ("max_position_embeddings", "n_positions", "block_size", "max_seq")


def seq_limit(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's config declares, if it declares one.

    A position table bounds the sequence dim; export finds that bound, fails, and suggests
    ``seq <= N`` (a second export, seconds on BERT-base). Declaring the config's bound up
    front saves that round; a wrong guess still gets export's own fix.
    """
    config = getattr(model, "config", None)
    for field in SEQ_LIMIT_FIELDS:
        limit = getattr(config, field, None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 2:
            return limit
    return None


def _widen(t: Any) -> Any:
    """torch.export specializes size-1 dims; trace a dynamic size-1 dim at size 2 instead."""
    for d in _dynamic_dims(t):
        if t.shape[d] == 1:
            reps = [1] * t.dim()
            reps[d] = 2
            t = t.repeat(*reps)
    return t


@contextlib.contextmanager
def traceable_experts(model: torch.nn.Module) -> Iterator[None]:
    """Trace a Hugging Face mixture-of-experts model through experts that export.

    transformers dispatches its MoE layers (Mixtral, Qwen2-MoE, OLMoE, ...) through
    ``ExpertsInterface``. Its default on 5.25, ``grouped_mm``, counts tokens per expert with
    ``aten::histc``, and its ``eager`` loop branches on data-dependent sizes, which
    torch.export refuses. This sets tgraph's own implementation for the trace (restored
    after): each experts block becomes one ``tgraph::moe_experts`` node, the IR's
    ``moe_experts`` (tgraph/frontend/moe.py); a block that op does not cover runs
    transformers' ``batched_mm`` (plain ops that gather each token's k experts' weights).
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_experts_implementation", None)
    setter = getattr(model, "set_experts_implementation", None)
    experts = any(hasattr(m, "is_concatenated") and hasattr(m, "_is_expert_parallel")
                  for m in model.modules())  # fmt: skip
    if setter is None or not experts:
        yield
        return
    from . import moe

    moe.register()
    setter(moe.IMPLEMENTATION)
    try:
        yield
    finally:
        setter(before)


def export(
    model: torch.nn.Module,
    args: tuple,
    kwargs: dict,
    dynamic: bool = True,
    call_info: dict | None = None,
) -> ExportedProgram:
    """Export ``model`` with batch/sequence dims symbolic and ATen ops kept whole.

    ``call_info``, when given, receives the forward signature and the traced argument
    names, so later calls can be matched to the traced structure.
    """
    sig = inspect.signature(model.forward)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise FrontendError(
            f"example inputs do not fit {type(model).__name__}.forward: {e}"
        ) from None
    names = list(bound.arguments)
    if call_info is not None:
        call_info.update(
            signature=[
                p.name
                for p in sig.parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ],
            traced_names=names,
            n_args=len(args),
            input_index=input_indices(bound.arguments),
            input_defaults=probe_defaults(model, sig, bound.arguments, len(args)),
        )
    values = {n: pytree.tree_map(_widen, v) if dynamic else v for n, v in bound.arguments.items()}
    wargs = tuple(values[n] for n in names[: len(args)])
    wkwargs = {n: values[n] for n in names[len(args) :]}
    error: Exception | None = None
    plans = (_DimPlan(shared=True, seq_max=seq_limit(model)), _DimPlan(shared=False))
    with traceable_experts(model):
        for plan in plans if dynamic else (None,):
            dynamic_shapes = (
                {n: pytree.tree_map(plan.spec, bound.arguments[n]) for n in names} if plan else None
            )
            try:
                ep = _export_refined(model, wargs, wkwargs, dynamic_shapes)
            except Exception as e:  # noqa: BLE001 - retried with the lenient plan, then reported
                error = error or e
                continue
            if call_info is not None:  # Dim.AUTO dims start at 2: export's floor (limits.py)
                call_info["auto_dims"] = plan is not None and not plan.shared
            return ep
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Cache" in first and "output" in first:
        first += (
            " (a Hugging Face KV cache is not a tensor output: set model.config.use_cache = "
            "False, or pass use_cache=False, before compiling)"
        )
    raise FrontendError(f"torch.export failed on {type(model).__name__}: {first}") from error


def _export_refined(model, args, kwargs, dynamic_shapes, attempts: int = 3) -> ExportedProgram:
    """torch.export, applying export's own suggested fixes (e.g. ``seq <= 512`` from a
    position table) to named dims before giving up on them."""
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                # torch's own pytree code warns about its LeafSpec deprecation on every export.
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
                return torch.export.export(
                    model, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False
                )
        except Exception as e:
            if attempt + 1 == attempts or dynamic_shapes is None or "Suggested fixes" not in str(e):
                raise
            fixes = _range_fixes(str(e))
            if not fixes:
                raise
            # torch's parser wants the fixes alone, without the advice that follows them.
            message = "Suggested fixes:\n" + "\n".join(fixes)
            dynamic_shapes = refine_dynamic_shapes_from_suggested_fixes(message, dynamic_shapes)
    raise AssertionError("unreachable")


def _range_fixes(error: str) -> list[str]:
    """The bounds among export's suggested fixes (``seq = Dim('seq', max=512)``).

    A fix that makes a dim a multiple (``seq = 320*_seq``) is dropped: it only simplifies
    export's guards, and taking it would compile a graph for multiples of 320 alone; the
    ``Dim.AUTO`` plan then exports the model with those guards (checked per call).
    """
    lines = [ln.strip() for ln in error.split("Suggested fixes:")[1].splitlines() if " = " in ln]
    bounds = [ln for ln in lines if ln.partition(" = ")[2].startswith("Dim(")]
    return [ln for ln in bounds if not ln.startswith("_")]
