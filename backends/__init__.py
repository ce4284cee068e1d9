"""Backends: lower an optimized IR graph to something that runs.

Each backend module provides ``lower(graph, device) -> Runner``; a runner takes the
graph inputs as torch tensors (in graph-input order) and returns the graph outputs as
torch tensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]

BACKENDS = ("ort", "torch", "reference")
DEVICES = ("cpu", "cuda")
_MODULES = {"reference": "reference_runner"}


def get_backend(name: str):
    """The backend module for ``name``; ValueError listing the valid names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if name not in _MODULES:
        raise NotImplementedError(f"backend {name!r} is not implemented yet; use 'reference'")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")
