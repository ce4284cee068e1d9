"""CUDA graphs for the torch backend: capture a lowered program once per input signature,
replay it after (docs/gpu.md)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import torch
from torch import nn


def can_replay(inputs: Sequence[torch.Tensor]) -> bool:
    """CUDA graphs only replay without autograd, on CUDA inputs, outside tracing/capture."""
    if torch.is_grad_enabled() or not inputs:
        return False
    if torch.compiler.is_compiling() or not torch.cuda.is_available():
        return False
    if not all(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
        return False
    return not torch.cuda.is_current_stream_capturing()


class CudaGraphs:
    """Capture ``program`` into one CUDA graph per input signature and replay it.

    A signature is the inputs' shapes, dtypes and devices, and whether inference mode is
    on. The first call with a new signature warms the program up on a side stream and
    captures it on static copies of the inputs; later calls copy the inputs in, replay, and return clones of the static
    outputs (so a result stays valid after the next call). The graphs read the parameters
    through their storage: in-place updates (optimizer steps) are seen, but when any
    parameter or buffer gets new storage (``p.data = ...``, ``.to()``) every graph is
    dropped and recaptured. Past ``max_graphs`` signatures, or when a capture fails (with a
    warning), calls run eagerly.
    """

    def __init__(self, program: nn.Module, max_graphs: int = 8, warmup: int = 2):
        self.program = program
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._entries: dict[tuple, tuple | None] = {}
        self._storage: tuple[int, ...] = ()

    def _storage_key(self) -> tuple[int, ...]:
        tensors = itertools.chain(self.program.parameters(), self.program.buffers())
        return tuple(t.data_ptr() for t in tensors)

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """The outputs, or None when this signature runs eagerly."""
        storage = self._storage_key()
        if storage != self._storage:
            self._entries.clear()
            self._storage = storage
        # Inference tensors captured under inference_mode cannot be refilled outside it.
        key = (torch.is_inference_mode_enabled(),) + tuple(
            (tuple(t.shape), t.dtype, t.device) for t in inputs
        )
        if key not in self._entries:
            if len(self._entries) >= self.max_graphs:
                return None
            self._entries[key] = self._capture(inputs, key)
        entry = self._entries[key]
        if entry is None:
            return None
        graph, static_inputs, static_outputs = entry
        for static, t in zip(static_inputs, inputs):
            static.copy_(t)
        with torch.cuda.device(static_inputs[0].device):
            graph.replay()
        return [t.clone() for t in static_outputs]

    def _capture(self, inputs: Sequence[torch.Tensor], key: tuple) -> tuple | None:
        static_inputs = [t.detach().clone() for t in inputs]
        try:
            with torch.cuda.device(static_inputs[0].device):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up (cuBLAS handles, allocator) off-capture
                    for _ in range(self.warmup):
                        self.program(*static_inputs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_outputs = list(self.program(*static_inputs))
        except Exception as e:  # an op that cannot be captured: run this signature eagerly
            warnings.warn(
                f"tgraph torch backend: CUDA-graph capture failed for inputs {key} ({e}); "
                "running them eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return graph, static_inputs, static_outputs
