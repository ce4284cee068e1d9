"""Numeric verification of every pass: ``compile(..., verify=True)``, ``tgraph compile --verify``.

:class:`NumericVerifier` is a pass instrument. Before the first pass it draws seeded random
inputs at several sizes (batch 1 with an odd sequence length, an odd batch and sequence,
and the traced sizes) and runs the input graph through the reference interpreter, keeping
every intermediate value. After each pass that changed the graph it

1. checks that no value surviving the pass by name had a symbolic dim fixed to a constant
   (a pass that bakes ``seq`` = 16 into a reshape works only at the traced size);
2. runs the new graph on the same inputs and compares its outputs with the previous
   graph's; on drift past the tolerance it names the pass, the first value (in node
   order) that survived the pass by name and now differs, the node that computes it, the
   rewrite rule behind it (``meta["rule"]`` of the nodes the pass created) and the module
   and source line it came from;
3. optionally compares gradients of the trainable parameters (``torch_gradients``: the
   torch backend lowers the graph onto the model's own parameters).

A failure raises :class:`NumericError`, which the pass manager reports as ``pass X failed
verification: ...`` with a reproducer in the dump dir, if any.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tgraph.ir import Graph, Node, SymDim, TensorType
from tgraph.passes.manager import (
    InstrumentError,
    PassInstrument,
    PassRecord,
    PassSpec,
    get_pass,
    optimize,
)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-4
# Used when the caller does not say which sizes the graph was traced at (the CLI's defaults).
FALLBACK_TRACED = {"batch": 2, "seq": 16}

Gradients = Callable[[Graph, Sequence[np.ndarray]], Mapping[str, np.ndarray]]


class NumericError(InstrumentError):
    """A pass changed the numbers (or fixed a symbolic dim). Fields say where.

    Attributes:
        pass_name: the pass (as written in the pipeline).
        node: the first differing value's node (its output name), or "".
        rule: the rewrite rule that made the differing nodes, or "".
        module: the model module the node came from, or "".
        source: ``file:line`` of the model code, or "".
    """

    def __init__(
        self, message: str, *, pass_name: str, node: str = "", rule: str = "",
        module: str = "", source: str = "",
    ):  # fmt: skip
        super().__init__(message)
        self.pass_name = pass_name
        self.node = node
        self.rule = rule
        self.module = module
        self.source = source


def close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[bool, float]:
    """Whether ``got`` matches ``want`` (same shape and dtype; floats within tolerance,
    NaN equal to NaN) and the largest absolute difference."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, float("inf")
    if got.size == 0:
        return True, 0.0
    if got.dtype.kind not in "fc":
        same = np.array_equal(got, want)
        return same, 0.0 if same else float("inf")
    g, w = got.astype(np.float64), want.astype(np.float64)
    ok = np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    finite = np.isfinite(g) & np.isfinite(w)
    err = float(np.max(np.abs(g - w)[finite])) if finite.any() else 0.0
    return bool(ok.all()), err


def verify_sizes(graph: Graph, traced: Mapping[str, int] | None = None) -> list[dict[str, int]]:
    """Symbol bindings to verify at: batch 1 with an odd sequence length, an odd batch and
    sequence, and the traced sizes (duplicates dropped)."""
    traced = dict(traced or {})
    symbols = graph.symbols()
    for name in symbols:
        traced.setdefault(name, FALLBACK_TRACED["batch" if name == "batch" else "seq"])
    sizes: list[dict[str, int]] = []
    for batch, seq in ((1, 7), (3, 5)):
        sizes.append({s: batch if s == "batch" else seq for s in symbols})
    sizes.append({s: traced[s] for s in symbols})
    unique: list[dict[str, int]] = []
    for b in sizes:
        if b not in unique:
            unique.append(b)
    return unique


def traced_bindings(graph: Graph, shapes: Sequence[Sequence[int]]) -> dict[str, int]:
    """The symbol values of the graph inputs' shapes (one shape per graph input)."""
    from tgraph.backends.reference import bind_symbols

    # bind_symbols reads only ndim and shape: zero-stride views cost no memory.
    return bind_symbols(graph, [np.broadcast_to(np.float32(0), tuple(s)) for s in shapes])


def _where(bindings: Mapping[str, int], seed: int) -> str:
    sizes = ",".join(f"{k}={v}" for k, v in bindings.items()) or "static shapes"
    return f"{sizes} seed {seed}"


@dataclass
class _Case:
    """One input set and the previous graph's values on it."""

    bindings: dict[str, int]
    seed: int
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    values: dict[str, np.ndarray]


class NumericVerifier(PassInstrument):
    """Checks every pass numerically against the graph before it (see the module docs).

    Args:
        traced: symbol values the model was traced with (``{"batch": 2, "seq": 16}``).
        sizes: symbol bindings to run at; default :func:`verify_sizes`.
        seeds: input seeds per size.
        rtol, atol: tolerance, as in ``np.isclose``.
        gradients: ``gradients(graph, inputs) -> {param name: grad}``, compared per pass
            for the names present before and after (see :func:`torch_gradients`).
    """

    def __init__(
        self,
        traced: Mapping[str, int] | None = None,
        *,
        sizes: Sequence[Mapping[str, int]] | None = None,
        seeds: Sequence[int] = (0,),
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        gradients: Gradients | None = None,
    ):
        self.traced = dict(traced) if traced else None
        self.sizes = [dict(b) for b in sizes] if sizes else None
        self.seeds = tuple(seeds)
        self.rtol, self.atol = rtol, atol
        self.gradients = gradients
        self.cases: list[_Case] = []
        self.checked: list[str] = []  # passes that changed the graph and were verified
        self._grads: Mapping[str, np.ndarray] = {}
        self._types: dict[str, TensorType] = {}
        self._old: list[Node] = []

    # -- instrument hooks ------------------------------------------------------------------------

    def run_start(self, graph: Graph) -> None:
        from tgraph.backends.reference import random_inputs

        self.cases = []
        for bindings in self.sizes or verify_sizes(graph, self.traced):
            for seed in self.seeds:
                inputs = random_inputs(graph, bindings, seed=seed)
                outputs, values = self._run(graph, inputs, "input graph", bindings, seed)
                self.cases.append(_Case(bindings, seed, inputs, outputs, values))
        if self.gradients is not None:
            self._grads = self.gradients(graph, self.cases[-1].inputs)

    def before_pass(self, graph: Graph, spec: PassSpec, index: int) -> None:
        self._types = {v.name: v.type for v in graph.values() if v.const is None}
        self._old = list(graph.nodes)

    def after_pass(self, graph: Graph, spec: PassSpec, index: int, changed: bool) -> None:
        if not changed:
            return
        name = str(spec)
        # A lossy pass (compression) drifts by design; the accuracy budget judges it. It must
        # still run and keep its dims symbolic, and later passes are checked against it.
        lossy = get_pass(spec.name).lossy
        self._check_symbolic_dims(graph, name)
        for case in self.cases:
            outputs, values = self._run(graph, case.inputs, f"the graph after {name}",
                                        case.bindings, case.seed, name)  # fmt: skip
            if not lossy:
                self._compare_outputs(graph, case, outputs, values, name)
            case.outputs, case.values = outputs, values
        if self.gradients is not None:
            if lossy:
                self._grads = self.gradients(graph, self.cases[-1].inputs)
            else:
                self._compare_gradients(graph, name)
        self._old = []
        self.checked.append(name)

    # -- checks ----------------------------------------------------------------------------------

    def _run(self, graph, inputs, what, bindings, seed, pass_name=""):
        from tgraph.backends.reference import run_graph

        try:
            return run_graph(graph, inputs, keep=("*",))
        except Exception as e:  # noqa: BLE001 - any failure to run is the finding
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise NumericError(
                f"{what} does not run at {_where(bindings, seed)}: {first}",
                pass_name=pass_name,
            ) from e

    def _check_symbolic_dims(self, graph: Graph, pass_name: str) -> None:
        for v in graph.values():
            before = self._types.get(v.name)
            if v.const is not None or before is None or len(before.shape) != v.rank:
                continue
            for axis, (old, new) in enumerate(zip(before.shape, v.shape)):
                if isinstance(old, SymDim) and not isinstance(new, SymDim):
                    node = v.producer
                    raise NumericError(
                        f"fixed symbolic dim {old} (axis {axis} of %{v.name}) to the constant "
                        f"{new}; the graph would only work at one size{_describe(node)}",
                        pass_name=pass_name, **_fields(node, self._old_ids()),
                    )  # fmt: skip

    def _old_ids(self) -> set[int]:
        return {id(n) for n in self._old}

    def _compare_outputs(self, graph, case, outputs, values, pass_name) -> None:
        for i, (got, want) in enumerate(zip(outputs, case.outputs)):
            ok, err = close(got, want, self.rtol, self.atol)
            if ok:
                continue
            out = graph.outputs[i].name
            node = self._first_difference(graph, case.values, values)
            fields = _fields(node, self._old_ids()) if node is not None else {}
            detail = f"; first differing value %{node.outputs[0].name}{_describe(node, fields)}"
            raise NumericError(
                f"output {i} %{out} drifts by {_err(err, got, want)} (rtol {self.rtol:g}, "
                f"atol {self.atol:g}) at {_where(case.bindings, case.seed)}"
                + (detail if node is not None else ""),
                pass_name=pass_name, **fields,
            )  # fmt: skip

    def _first_difference(self, graph: Graph, old: Mapping[str, np.ndarray], new) -> Node | None:
        for node in graph.nodes:
            for v in node.outputs:
                if v.name not in old or v.name not in new:
                    continue
                a, b = new[v.name], old[v.name]
                if a.shape != b.shape or a.dtype != b.dtype:
                    continue  # a different value that reuses the name
                if not close(a, b, self.rtol, self.atol)[0]:
                    return node
        return None

    def _compare_gradients(self, graph: Graph, pass_name: str) -> None:
        grads = self.gradients(graph, self.cases[-1].inputs)
        for name in sorted(set(grads) & set(self._grads)):
            ok, err = close(grads[name], self._grads[name], self.rtol * 10, self.atol * 10)
            if not ok:
                users = [n for n in graph.nodes if any(v is not None and v.name == name
                                                       for v in n.inputs)]  # fmt: skip
                node = users[0] if users else None
                fields = _fields(node, self._old_ids()) if node is not None else {}
                raise NumericError(
                    f"gradient of parameter {name} drifts by {err:.3g} at "
                    f"{_where(self.cases[-1].bindings, self.cases[-1].seed)}"
                    + (f"; read by %{node.name}{_describe(node, fields)}" if node else ""),
                    pass_name=pass_name, **fields,
                )  # fmt: skip
        self._grads = grads


def _err(err: float, got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"a type change ({want.dtype}{list(want.shape)} -> {got.dtype}{list(got.shape)})"
    return f"max abs {err:.3g}"


def _fields(node: Node | None, old_ids: set[int]) -> dict[str, str]:
    """node / rule / module / source for an error: the rule comes from the node, or from the
    nearest node upstream of it that the pass created."""
    if node is None:
        return {}
    rule = _rule_upstream(node, old_ids) if old_ids else node.meta.get("rule", "")
    return {
        "node": node.outputs[0].name if node.outputs else node.op,
        "rule": rule,
        "module": node.meta.get("module", ""),
        "source": node.meta.get("source", ""),
    }


def _rule_upstream(node: Node, old_ids: set[int]) -> str:
    seen: set[int] = set()
    todo = [node]
    while todo:
        n = todo.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if id(n) not in old_ids:
            if n.meta.get("rule"):
                return n.meta["rule"]
            todo.extend(v.producer for v in n.inputs if v is not None and v.producer)
        elif n is node:
            todo.extend(v.producer for v in n.inputs if v is not None and v.producer)
    return ""


def _describe(node: Node | None, fields: Mapping[str, str] | None = None) -> str:
    if node is None:
        return ""
    fields = fields if fields is not None else _fields(node, set())
    parts = [node.op]
    if fields.get("rule"):
        parts.append(f"rule {fields['rule']}")
    if fields.get("module"):
        parts.append(f"from module {fields['module']}")
    if fields.get("source"):
        parts.append(f"at {fields['source']}")
    return f" ({', '.join(parts)})"


# -- gradients through the torch backend ----------------------------------------------------------


def torch_gradients(params: Mapping[str, Any], seed: int = 0) -> Gradients:
    """A ``gradients`` callable: lowers the graph with the torch backend onto ``params`` (the
    model's own parameters by full name) and returns d(loss)/d(param) for every parameter
    that requires grad and that the graph reads, with loss = sum of each float output times
    a fixed random tensor (so no output can cancel another)."""
    import torch

    from tgraph.backends import get_backend
    from tgraph.tensors import to_numpy, to_torch

    trainable = {k: p for k, p in params.items() if getattr(p, "requires_grad", False)}

    def gradients(graph: Graph, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        used = [k for k in graph.initializers if k in trainable]
        if not used:
            return {}
        runner = get_backend("torch").lower(graph, "cpu", params=params)
        outs = runner([to_torch(np.array(a)) for a in inputs])
        gen = torch.Generator().manual_seed(seed)
        loss = sum(
            (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
            for o in outs
            if o.is_floating_point() and o.requires_grad
        )
        if not torch.is_tensor(loss):
            return {}
        grads = torch.autograd.grad(loss, [trainable[k] for k in used], allow_unused=True)
        return {k: to_numpy(g) for k, g in zip(used, grads) if g is not None}

    return gradients


# -- entry points ------------------------------------------------------------------------------


def verify_pipeline(
    graph: Graph,
    pipeline: str | Sequence[str] = "default",
    *,
    traced: Mapping[str, int] | None = None,
    sizes: Sequence[Mapping[str, int]] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    gradients: Gradients | None = None,
    dump_dir: str | None = None,
) -> tuple[Graph, list[PassRecord]]:
    """``optimize(graph, pipeline)`` with every pass checked numerically.

    Raises:
        PassError: "pass X failed verification: ..." naming the pass, the first differing
            value, its rule and module; its ``__cause__`` is the :class:`NumericError`.
    """
    verifier = NumericVerifier(traced, sizes=sizes, rtol=rtol, atol=atol, gradients=gradients)
    return optimize(graph, pipeline, dump_dir=dump_dir, instruments=[verifier])


def compile_verifier(
    graph: Graph, model: Any, example_inputs: Any, backend: str
) -> NumericVerifier:
    """The verifier ``tgraph.compile(..., verify=True)`` uses: traced sizes from the example
    inputs; gradients too for the torch backend when the model has trainable parameters."""
    from tgraph.api import flatten_call, model_tensors
    from tgraph.frontend import normalize_inputs

    args, kwargs = normalize_inputs(example_inputs)
    tensors = flatten_call(graph, args, kwargs)
    traced = traced_bindings(graph, [tuple(t.shape) for t in tensors])
    gradients = None
    trains = hasattr(model, "parameters") and any(p.requires_grad for p in model.parameters())
    if backend == "torch" and trains:
        gradients = torch_gradients(model_tensors(model))
    return NumericVerifier(traced, gradients=gradients)
