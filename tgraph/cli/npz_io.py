"""Inputs and outputs of ``tgraph run``: .npz files keyed by graph input/output names."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from tgraph.ir import Graph, SymDim
from tgraph.ir.dims import format_shape

if TYPE_CHECKING:
    from tgraph.api import CompiledModel


class RunInputError(ValueError):
    """An input file does not fit the compiled model."""


def read_inputs(
    graph: Graph, path: str | None, random: bool, batch: int, seq: int, seed: int
) -> list[np.ndarray]:
    """Arrays for the graph inputs, in order: from ``path`` (.npz by name) or random."""
    if random:
        from tgraph.backends.reference import random_inputs

        bindings = {s: (batch if s == "batch" else seq) for s in graph.symbols()}
        return random_inputs(graph, bindings, seed=seed)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RunInputError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise RunInputError(f"{path}: not a readable .npz file ({e})") from None
    arrays = []
    for v in graph.inputs:
        if v.name not in data.files:
            raise RunInputError(
                f"{path}: missing input {v.name!r} (has {', '.join(data.files) or 'nothing'}; "
                f"the model takes {', '.join(i.name for i in graph.inputs)})"
            )
        a = data[v.name]
        want = f"{v.dtype.name}{format_shape(v.shape)}"
        if a.ndim != v.rank:
            raise RunInputError(f"{path}: input {v.name!r} has rank {a.ndim}, want {want}")
        if a.dtype != v.dtype.numpy:
            raise RunInputError(f"{path}: input {v.name!r} has dtype {a.dtype}, want {want}")
        for d, n in zip(v.shape, a.shape):
            if not isinstance(d, SymDim) and d != n:
                raise RunInputError(
                    f"{path}: input {v.name!r} has shape {list(a.shape)}, want {want}"
                )
        arrays.append(a)
    return arrays


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
