"""Backends: lower an optimized IR graph to something that runs.

Every backend module satisfies :class:`Backend`: ``lower(graph, device, params=None) ->
Runner`` and, when an artifact needs files of its own, ``save_files(graph, directory,
device)``. ``params`` maps initializer names to the model's own parameters and buffers (by
full name), for backends that run on them in place (the torch backend trains through
them). A runner takes the graph inputs as torch tensors (in graph-input order) and returns
the graph outputs as torch tensors; it may be an ``nn.Module``. A graph a backend cannot
lower raises :class:`LoweringError`, naming the node. :data:`BACKENDS` is the one table of
backends: the API, the artifact loader and the CLI's ``--backend`` choices read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LoweringError

if TYPE_CHECKING:
    import torch

Runner = Callable[[Sequence["torch.Tensor"]], list["torch.Tensor"]]
DEVICES = ("cpu", "cuda")


class Backend(Protocol):
    """What a backend module provides (``save_files`` only where an artifact needs it)."""

    def lower(
        self, graph: Any, device: str = "cpu", params: Mapping[str, torch.Tensor] | None = None
    ) -> Runner: ...


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str  # under tgraph.backends
    summary: str


_TABLE = (
    BackendInfo("ort", "ort", "ONNX Runtime with its fused contrib kernels; inference only"),
    BackendInfo("torch", "torch_backend", "torch.fx on the model's parameters; trains"),
    BackendInfo("reference", "reference_runner", "the NumPy interpreter: the tests' oracle"),
)
_BY_NAME = {b.name: b for b in _TABLE}
BACKENDS = tuple(_BY_NAME)


def get_backend(name: str) -> Backend:
    """The backend module for ``name``; ValueError listing the valid names otherwise."""
    info = _BY_NAME.get(name)
    if info is None:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{info.module}")


__all__ = [
    "BACKENDS",
    "DEVICES",
    "Backend",
    "BackendInfo",
    "LoweringError",
    "Runner",
    "get_backend",
]


class LazyRunner:
    """A runner that lowers its graph on the first call (``lower`` is a backend's
    ``lower(graph, device, params=...)``): a loaded causal LM keeps its plain graph this
    way, so ``generate`` alone never holds a second session's weights."""

    def __init__(self, lower: Callable[..., Runner], *args: Any, **kwargs: Any):
        self._lower = (lower, args, kwargs)
        self._runner: Runner | None = None

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._runner is None:
            lower, args, kwargs = self._lower
            self._runner = lower(*args, **kwargs)
        return self._runner(inputs)
