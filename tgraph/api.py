"""The public entry points: ``compile`` and the :class:`CompiledModel` it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from tgraph.backends import Runner
from tgraph.frontend import ir_dtype, normalize_inputs, trace
from tgraph.frontend.limits import LimitError, check_limits
from tgraph.ir import Graph, SymDim
from tgraph.passes.manager import PassManager
from tgraph.tensors import small_pages


class InputError(ValueError):
    """Arguments passed to a compiled model do not fit what it was traced with."""


def name_inputs(names: Sequence[str], args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by name: positional ones take ``names`` in order."""
    if len(args) > len(names):
        raise InputError(f"takes at most {len(names)} positional inputs, got {len(args)}")
    named = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in named:
            raise InputError(f"input {key!r} given twice")
        named[key] = value
    return named


def flatten_call(graph: Graph, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Match a call to the traced structure and return the tensors for the graph inputs."""
    signature = graph.meta.get("signature")
    in_spec = graph.meta.get("in_spec")
    if signature is not None:
        traced = graph.meta["traced_names"]
        n_args = graph.meta["n_args"]
        named = name_inputs(signature, args, kwargs)
        extra = sorted(set(named) - set(traced))
        _fill_defaults(graph, named)
        missing = [n for n in traced if n not in named]
        if missing or extra:
            want = ", ".join(traced)
            problem = f"missing {missing}" if missing else f"unexpected {extra}"
            raise InputError(f"inputs {problem}; the model was traced with: {want}")
        args = tuple(named[n] for n in traced[:n_args])
        kwargs = {n: named[n] for n in traced[n_args:]}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    if in_spec is not None and spec != in_spec:
        raise InputError("inputs do not have the structure the model was traced with")
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if len(tensors) != len(graph.inputs):
        raise InputError(f"expected {len(graph.inputs)} tensor inputs, got {len(tensors)}")
    check_inputs(graph, tensors)
    return tensors


def _fill_defaults(graph: Graph, named: dict[str, Any]) -> None:
    """Add the model's own value for each omitted optional input (attention_mask: ones)."""
    from tgraph.frontend.defaults import default_arrays
    from tgraph.tensors import to_torch

    table = graph.meta.get("input_defaults") or {}
    omitted = [n for n in graph.meta["traced_names"] if n not in named and n in table]
    if not omitted:
        return
    index = graph.meta.get("input_index", {})
    given = {index[n]: tuple(v.shape) for n, v in named.items()
             if n in index and isinstance(v, torch.Tensor)}  # fmt: skip
    device = next((v.device for v in named.values() if isinstance(v, torch.Tensor)), None)
    try:
        arrays = default_arrays(graph, given, omitted)
    except ValueError as e:
        raise InputError(str(e)) from None
    for n, a in arrays.items():
        named[n] = to_torch(a).to(device) if device is not None else to_torch(a)


def check_inputs(graph: Graph, tensors: Sequence[torch.Tensor]) -> None:
    """Rank, dtype and static dims of each input, consistent symbol values, and the
    model's limits: embedding indices in range, dims within their bounds."""
    bindings: dict[str, int] = {}
    for v, t in zip(graph.inputs, tensors):
        expected = f"expected {v.dtype.name}[{', '.join(str(d) for d in v.shape)}]"
        got = f"got {str(t.dtype).replace('torch.', '')}{list(t.shape)}"
        if t.dim() != v.rank or ir_dtype(t.dtype) != v.dtype:
            raise InputError(f"input {v.name}: {expected}, {got}")
        for want, have in zip(v.shape, t.shape):
            if isinstance(want, SymDim):
                if have == 0:  # the dim algebra takes sizes >= 1 (max(1 - seq, 0) is 0)
                    raise InputError(
                        f"input {v.name}: {expected}, {got}: {want.name} is 0, and a compiled "
                        "model takes sizes of at least 1 in its symbolic dims"
                    )
                if bindings.setdefault(want.name, have) != have:
                    raise InputError(
                        f"input {v.name}: {expected}, {got} ({want.name} is "
                        f"{bindings[want.name]} in another input)"
                    )
            elif want != have:
                raise InputError(f"input {v.name}: {expected}, {got}")
    try:
        check_limits(graph, tensors, bindings)
    except LimitError as e:
        raise InputError(str(e)) from None


def unflatten_outputs(graph: Graph, outputs: Sequence[torch.Tensor]) -> Any:
    """Rebuild the model's own output structure (tensor, tuple, dict, ModelOutput)."""
    leaves = []
    for kind, item in graph.meta.get("output_leaves", [("value", i) for i in range(len(outputs))]):
        leaves.append(outputs[item] if kind == "value" else item)
    spec = graph.meta.get("out_spec")
    if spec is None:
        return leaves[0] if len(leaves) == 1 else tuple(leaves)
    return pytree.tree_unflatten(leaves, spec)


class CompiledModel(torch.nn.Module):
    """A traced, optimized and lowered model, called like the original.

    For ``backend="torch"`` the lowered program is a submodule that holds the model's own
    parameters, so ``cm.parameters()`` can be trained; other backends have no parameters.

    Attributes:
        graph: the optimized :class:`tgraph.Graph`.
        report: per-pass records (name, seconds, nodes before/after, changed).
        backend: "ort", "torch" or "reference".
        device: "cpu" or "cuda".
        pipeline: the pipeline that produced ``graph``, as text.
        accuracy: the :class:`tgraph.accuracy.AccuracyReport` of an accuracy budget.
    """

    def __init__(
        self,
        graph: Graph,
        runner: Runner,
        backend: str,
        device: str,
        report: list | None = None,
        pipeline: str = "",
    ):
        super().__init__()
        self.graph = graph
        self.report = report or []
        self.backend = backend
        self.device = device
        self.pipeline = pipeline
        self.accuracy = None  # an AccuracyReport when compiled with an accuracy budget
        self.sharding = None  # a tgraph.sharded.Sharding when compiled with world_size > 1
        self.sharding = None  # a tgraph.sharded.Sharding for a tensor-parallel model
        self.runner = runner  # an nn.Module runner registers as a submodule

    @property
    def graph(self) -> Graph:
        """The optimized graph. On the torch backend the int4 weights live only in the
        program's packed layout after compile; reading ``graph`` rebuilds the graph's own
        arrays of them (exactly) the first time."""
        restore = getattr(self.runner, "restore_constants", None)
        if restore is not None:
            restore()
        return self._graph

    @graph.setter
    def graph(self, graph: Graph) -> None:
        self._graph = graph

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tensors = flatten_call(self._graph, args, kwargs)  # structure only: no constants
        return unflatten_outputs(self._graph, self.runner(tensors))

    def save(self, directory: str) -> None:
        """Write an artifact directory atomically; ``tgraph.load(directory)`` reloads it."""
        from tgraph.artifact import save

        save(self, directory)

    def extra_repr(self) -> str:
        return f"{self._graph.name}, backend={self.backend!r}, device={self.device!r}, " + (
            f"{len(self._graph.nodes)} nodes"
        )


def _calibrator(calibration: Any, graph: Graph, manager: PassManager) -> Any:
    """The :class:`tgraph.calibration.Calibrator` of ``compile(..., calibration=)``, bound
    to the traced graph, or None."""
    if calibration is None:
        return None
    from tgraph.calibration import CalibrationError, Calibrator
    from tgraph.passes.manager import get_pass

    if not any(get_pass(spec.name).lossy for spec in manager.specs):
        raise CalibrationError(
            f"calibration needs a compression pipeline (int4, ...); got {manager.pipeline!r}"
        )

    calibrator = calibration if isinstance(calibration, Calibrator) else Calibrator(calibration)
    calibrator.bind(graph)
    return calibrator


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by full name (tied weights under every name)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tensors[name] = p
    for name, b in model.named_buffers(remove_duplicate=False):
        tensors.setdefault(name, b)
    return tensors


def _trains(model: Any) -> bool:
    """A module in training mode with parameters that require grad (an ExportedProgram
    is not trained)."""
    if not isinstance(model, torch.nn.Module) or not model.training:
        return False
    return any(p.requires_grad for p in model.parameters())


def compile(
    model: torch.nn.Module,
    example_inputs: Any,
    backend: str = "ort",
    device: str = "cpu",
    pipeline: str | Sequence[str] = "default",
    dynamic: bool = True,
    dump_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
    verify: bool = False,
    accuracy: dict[str, float] | None = None,
    world_size: int = 1,
    calibration: Sequence[Any] | None = None,
) -> CompiledModel:
    """Trace, optimize and lower ``model``.

    Args:
        model: the PyTorch module (in eval mode for inference).
        example_inputs: a tensor, a tuple of args or a dict of kwargs.
        backend: "ort", "torch" or "reference".
        device: "cpu" or "cuda".
        pipeline: a named pipeline ("default", "training", "none"), "pass-a,pass-b", or a
            list of pass names.
        dynamic: keep batch and sequence dims symbolic.
        dump_dir: write per-pass dumps, diffs and ``summary.json`` here.
        progress: called with a short message at each step (tracing, each pass, lowering).
        verify: check every pass numerically against the graph before it with the
            reference interpreter (and gradients, for the torch backend with trainable
            parameters); raises ``PassError`` naming the first pass that drifts
            (``tgraph.debug.numcheck``).
        accuracy: a budget for a compression pipeline, ``{"max_rel_error": 1e-2}`` (and
            optionally ``"min_top1": 0.99``): layers are kept in fp32, most sensitive
            first, until the compressed model meets it on the example inputs
            (``tgraph.accuracy``); the result is ``cm.accuracy``.
        world_size: shard the model over this many ranks (tensor parallel, torch backend,
            one process per rank under torchrun; ``tgraph.sharded``, docs/sharding.md).
        calibration: a list of inputs, each called like ``example_inputs``, for the
            compression passes: ``int4`` quantizes with GPTQ error feedback on each
            layer's input statistics (``tgraph.calibration``, docs/compression.md).

    Returns:
        A :class:`CompiledModel` called like ``model``; for a Hugging Face causal LM a
        :class:`tgraph.generation.Generator`, which also has ``generate``
        (docs/generation.md).
    """
    options = dict(backend=backend, device=device, pipeline=pipeline, dynamic=dynamic,
                   dump_dir=dump_dir, progress=progress, verify=verify, accuracy=accuracy,
                   calibration=calibration)  # fmt: skip
    from tgraph.generation.compile import compile_generator, is_causal_lm

    with small_pages():  # compile's new arrays fill at page-fault speed, not compaction's
        # A sharded causal LM compiles its forward (the decode graph is not sharded yet).
        if world_size == 1 and is_causal_lm(model) and not _trains(model):
            return compile_generator(model, example_inputs, **options)
        return compile_plain(model, example_inputs, **options, world_size=world_size)


def check_target(backend: str, device: str) -> None:
    """ValueError naming the valid choices for an unknown backend or device."""
    from tgraph.backends import BACKENDS, DEVICES

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")


def compile_plain(
    model: torch.nn.Module,
    example_inputs: Any,
    backend: str = "ort",
    device: str = "cpu",
    pipeline: str | Sequence[str] = "default",
    dynamic: bool = True,
    dump_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
    verify: bool = False,
    accuracy: dict[str, float] | None = None,
    world_size: int = 1,
    calibration: Any = None,
) -> CompiledModel:
    """:func:`compile` of the model's forward alone (the same arguments); ``calibration`` is a
    list of inputs or a :class:`tgraph.calibration.Calibrator`."""
    from tgraph.backends import get_backend

    check_target(backend, device)
    if pipeline == "default" and backend == "torch" and _trains(model):
        pipeline = "training"  # never bake parameters that are being trained into constants
    say = progress or (lambda _msg: None)
    # Parse the pipeline first: a typo fails before the slow trace.
    manager = PassManager(pipeline, dump_dir=dump_dir, progress=progress)
    from tgraph.sharded import prepare

    sharding = prepare(manager, world_size, verify)
    normalize_inputs(example_inputs)  # type check with a clear message
    say("tracing with torch.export")
    graph = trace(model, example_inputs, dynamic=dynamic)
    if verify:
        from tgraph.debug.numcheck import compile_verifier

        manager.instruments.append(compile_verifier(graph, model, example_inputs, backend))
    rerun = bool(dump_dir or manager.instruments)
    calibrator = _calibrator(calibration, graph, manager)
    if calibrator is not None:
        manager.instruments.append(calibrator)
    fitted = None
    if accuracy is not None:
        from tgraph.accuracy import fit_budget

        samples = [[t.detach().cpu().numpy() for t in flatten_call(graph, *normalize_inputs(
            example_inputs))]]  # fmt: skip
        traced = graph
        graph, report, text, fitted = fit_budget(
            graph, manager.pipeline, accuracy, samples, say, calibrator
        )
        manager = PassManager(
            text, dump_dir=dump_dir, progress=progress, instruments=manager.instruments
        )
        if rerun:
            # the trials ran without dumps and verification: run the chosen pipeline with them
            graph, report = manager.run(traced)
    else:
        graph, report = manager.run(graph)
    if calibrator is not None:
        from tgraph.calibration import drop

        drop(graph)
    params = model_tensors(model) if isinstance(model, torch.nn.Module) else None
    say(f"lowering to {backend}")
    runner = get_backend(backend).lower(graph, device, params=params)
    release = getattr(runner, "release_constants", None)
    if release is not None:  # torch: the packed int4 weights are the only copy held
        release()
    cm = CompiledModel(graph, runner, backend, device, report, manager.pipeline)
    cm.accuracy = fitted
    cm.sharding = sharding.finish(graph) if sharding else None
    return cm
