"""Inputs and outputs of ``tgraph run``: .npz files keyed by graph input/output names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from tgraph.ir import Graph, SymDim
from tgraph.ir.dims import format_shape

if TYPE_CHECKING:
    from tgraph.api import CompiledModel


class RunInputError(ValueError):
    """An input file does not fit the compiled model."""


@dataclass
class RunInputs:
    """The arrays for the graph inputs, in order, and what ``tgraph run`` should say."""

    arrays: list[np.ndarray]
    notes: list[str] = field(default_factory=list)


def random_run_inputs(graph: Graph, bindings: dict[str, int], seed: int) -> RunInputs:
    """Seeded random inputs at the given symbol values (``{"batch": 2, "seq": 16}``)."""
    from tgraph.backends.reference import random_inputs

    missing = [s for s in graph.symbols() if s not in bindings]
    if missing:
        raise RunInputError(
            f"no size for {', '.join(missing)}: the artifact records no example sizes; "
            "give --inputs FILE.npz or --random --batch B --seq-len S"
        )
    return RunInputs(random_inputs(graph, bindings, seed=seed))


def read_inputs(graph: Graph, path: str) -> RunInputs:
    """Arrays for the graph inputs from an .npz keyed by input name.

    An input the file leaves out gets the model's own default when the model has one
    (``attention_mask`` all ones; see ``tgraph.frontend.defaults``).
    """
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RunInputError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise RunInputError(f"{path}: not a readable .npz file ({e})") from None
    defaults = graph.meta.get("input_defaults") or {}
    # the model's argument name of each graph input that has a default
    optional = {graph.inputs[d["index"]].name: n for n, d in defaults.items()}
    arrays: dict[int, np.ndarray] = {}
    for i, v in enumerate(graph.inputs):
        if v.name in data.files:
            arrays[i] = _checked(path, v, data[v.name])
        elif v.name not in optional:
            raise RunInputError(
                f"{path}: missing input {v.name!r} (has {', '.join(data.files) or 'nothing'}; "
                f"the model takes {', '.join(i.name for i in graph.inputs)})"
            )
    filled = [optional[v.name] for v in graph.inputs if v.name not in data.files]
    notes = []
    if filled:
        from tgraph.frontend.defaults import default_arrays

        shapes = {i: a.shape for i, a in arrays.items()}
        try:
            for name, a in default_arrays(graph, shapes, filled).items():
                arrays[defaults[name]["index"]] = a
        except ValueError as e:
            raise RunInputError(f"{path}: {e}") from None
        notes = [f"{n}: not in {path}, using the model's default ({defaults[n]['fill']})"
                 for n in filled]  # fmt: skip
    return RunInputs([arrays[i] for i in range(len(graph.inputs))], notes)


def _checked(path: str, v, a: np.ndarray) -> np.ndarray:
    want = f"{v.dtype.name}{format_shape(v.shape)}"
    if a.ndim != v.rank:
        raise RunInputError(f"{path}: input {v.name!r} has rank {a.ndim}, want {want}")
    if a.dtype != v.dtype.numpy:
        raise RunInputError(f"{path}: input {v.name!r} has dtype {a.dtype}, want {want}")
    for d, n in zip(v.shape, a.shape):
        if not isinstance(d, SymDim) and d != n:
            raise RunInputError(f"{path}: input {v.name!r} has shape {list(a.shape)}, want {want}")
    return a


def run_flat(cm: CompiledModel, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Run on arrays in graph-input order; outputs keyed by graph output name."""
    from tgraph.api import check_inputs
    from tgraph.tensors import to_numpy, to_torch

    tensors = [to_torch(a) for a in arrays]
    check_inputs(cm.graph, tensors)
    with torch.no_grad():
        outs = cm.runner(tensors)
    return {v.name: to_numpy(t) for v, t in zip(cm.graph.outputs, outs)}


def write_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **outputs)
    os.replace(tmp, path)


def summarize(outputs: dict[str, np.ndarray]) -> str:
    lines = []
    for name, a in outputs.items():
        stats = ""
        if a.size and a.dtype.kind == "f":
            stats = f"  mean {float(a.mean()):.6g}  std {float(a.std()):.6g}"
        lines.append(f"{name}: {a.dtype}{list(a.shape)}{stats}")
    return "\n".join(lines) + "\n"
