"""Optional model inputs: find the value a model uses when an input is omitted.

Hugging Face models take ``attention_mask=None`` to mean all ones, ``token_type_ids=None``
zeros and ``position_ids=None`` ``0..seq-1``. A traced graph has these as ordinary inputs,
so a compiled model must fill them when a call leaves them out. Which fill is right is not
guessed from the name: at trace time the model runs eagerly once without the input and
once with each candidate fill, and the candidate whose outputs match is recorded in
``graph.meta["input_defaults"]`` (``{name: {"index": graph input index, "fill": kind}}``).
At call time :func:`default_arrays` builds the fill at the call's own sizes, so one compile
serves every shape without retracing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from tgraph.ir import Graph, SymDim, evaluate


def _range(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    # position ids: 0..T-1 along the last dim, the same row for every batch entry
    last = shape[-1] if shape else 1
    return np.broadcast_to(np.arange(last, dtype=dtype), tuple(shape)).copy()


# Candidate fills, tried in this order; each takes a shape and a NumPy dtype.
FILLS: dict[str, Callable[[Sequence[int], np.dtype], np.ndarray]] = {
    "ones": lambda shape, dtype: np.ones(tuple(shape), dtype=dtype),
    "zeros": lambda shape, dtype: np.zeros(tuple(shape), dtype=dtype),
    "range": _range,
}


def _call(model: torch.nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same dropout draws (if any) for every probe
        out = model(*args, **kwargs)
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            if not torch.allclose(x, y, rtol=1e-5, atol=1e-5 * (1 + float(y.abs().max()))):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def input_indices(arguments: Mapping[str, Any]) -> dict[str, int]:
    """The graph input each traced argument that is one tensor becomes, by name."""
    index, found = 0, {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            found[name] = index
        index += sum(isinstance(x, torch.Tensor) for x in pytree.tree_leaves(value))
    return found


def probe_defaults(
    model: torch.nn.Module, signature: inspect.Signature, arguments: Mapping[str, Any],
    n_args: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Which traced inputs the model's forward can omit, and the fill that reproduces it.

    Args:
        model: the module being traced.
        signature: ``inspect.signature(model.forward)``.
        arguments: the traced arguments by name, in call order (the first ``n_args`` were
            given positionally).
        n_args: how many arguments were positional.

    Returns:
        ``{name: {"index": i, "fill": kind}}`` for each keyword input that is one tensor
        (graph input ``i``) with a default in ``forward`` that one of :data:`FILLS` matches.
    """
    names = list(arguments)
    found = {}
    for name, index in input_indices(arguments).items():
        param = signature.parameters.get(name)
        optional = param is not None and param.default is not inspect.Parameter.empty
        if optional and names.index(name) >= n_args and arguments[name].dim() > 0:
            kind = _matching_fill(model, names, arguments, n_args, name)
            if kind is not None:
                found[name] = {"index": index, "fill": kind}
    return found


def _matching_fill(model, names, arguments, n_args, name) -> str | None:
    args = tuple(arguments[n] for n in names[:n_args])
    rest = {n: arguments[n] for n in names[n_args:] if n != name}
    try:
        omitted = _call(model, args, rest)
    except Exception:  # noqa: BLE001 - a forward that cannot run without it: the input is required
        return None
    example = arguments[name]
    dtype = np.dtype(str(example.dtype).replace("torch.", ""))
    for kind, fill in FILLS.items():
        filled = torch.from_numpy(fill(tuple(example.shape), dtype)).to(example.device)
        try:
            if _same(_call(model, args, {**rest, name: filled}), omitted):
                return kind
        except Exception:  # noqa: BLE001 - this fill is not a value the model takes
            continue
    return None


def bind_sizes(graph: Graph, shapes: Mapping[int, Sequence[int]]) -> dict[str, int]:
    """Symbol values (``{"batch": 2, "seq": 16}``) read off input shapes by input index."""
    bindings: dict[str, int] = {}
    for i, shape in shapes.items():
        for d, n in zip(graph.inputs[i].shape, shape):
            if isinstance(d, SymDim) and d.is_symbol():
                bindings.setdefault(d.name, int(n))
    return bindings


def example_sizes(graph: Graph, example_inputs: Any) -> dict[str, int]:
    """The symbol values of the example inputs (what ``tgraph run`` uses without inputs)."""
    leaves = [x for x in pytree.tree_leaves(example_inputs) if isinstance(x, torch.Tensor)]
    if len(leaves) != len(graph.inputs):
        return {}
    return bind_sizes(graph, {i: tuple(t.shape) for i, t in enumerate(leaves)})


def default_arrays(
    graph: Graph, given: Mapping[int, Sequence[int]], names: Iterable[str]
) -> dict[str, np.ndarray]:
    """The model's own values for the omitted inputs ``names``, sized like this call.

    Args:
        graph: a traced graph with ``meta["input_defaults"]``.
        given: the shape of each input the call did give, by graph input index.
        names: the omitted inputs; each must be in ``meta["input_defaults"]``.

    Raises:
        ValueError: a dim of an omitted input is not fixed by any given input.
    """
    table = graph.meta.get("input_defaults", {})
    bindings = bind_sizes(graph, given)
    out = {}
    for name in names:
        v = graph.inputs[table[name]["index"]]
        try:
            shape = [evaluate(d, bindings) for d in v.shape]
        except KeyError as e:
            raise ValueError(
                f"input {name!r} was omitted but its size is not set by the other inputs "
                f"({e.args[0]}); pass it"
            ) from None
        out[name] = FILLS[table[name]["fill"]](shape, v.dtype.numpy)
    return out
