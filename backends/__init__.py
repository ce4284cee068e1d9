"""Backends: lower an optimized IR graph to something that runs.

Each backend module provides ``lower(graph, device, params=None) -> Runner``. ``params``
maps initializer names to the model's own parameters and buffers (by full name), for
backends that run on them in place (the torch backend trains through them). A runner
takes the graph inputs as torch tensors (in graph-input order) and returns the graph
outputs as torch tensors; it may be an ``nn.Module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]

BACKENDS = ("ort", "torch", "reference")
DEVICES = ("cpu", "cuda")
_MODULES = {"reference": "reference_runner", "ort": "ort", "torch": "torch_backend"}


def get_backend(name: str):
    """The backend module for ``name``; ValueError listing the valid names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if name not in _MODULES:
        raise NotImplementedError(f"backend {name!r} is not implemented yet; use 'reference'")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")
