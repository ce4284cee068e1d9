"""tgraph: a compute-graph compiler for Transformer models.

import tgraph
cm = tgraph.compile(model, example_inputs, backend="reference")
out = cm(*args)
g = tgraph.trace(model, example_inputs)
print(g.dump())

The package imports lazily: ``import tgraph.ir`` (or ``tgraph.passes``) loads neither torch
nor onnxruntime; the first use of a name below imports the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ArtifactError": "tgraph.artifact",
    "load": "tgraph.artifact",
    "CompiledModel": "tgraph.api",
    "InputError": "tgraph.api",
    "compile": "tgraph.api",
    "FrontendError": "tgraph.frontend",
    "trace": "tgraph.frontend",
    "DType": "tgraph.ir",
    "Graph": "tgraph.ir",
    "IRError": "tgraph.ir",
    "Node": "tgraph.ir",
    "SymDim": "tgraph.ir",
    "TensorType": "tgraph.ir",
    "Value": "tgraph.ir",
    "PassError": "tgraph.passes.manager",
    "PipelineError": "tgraph.passes.manager",
    "diff": "tgraph.passes.manager",
    "list_passes": "tgraph.passes.registry",
    "list_pipelines": "tgraph.passes.registry",
    "optimize": "tgraph.passes.manager",
}

__all__ = [
    "ArtifactError",
    "CompiledModel",
    "DType",
    "FrontendError",
    "Graph",
    "IRError",
    "InputError",
    "Node",
    "PassError",
    "PipelineError",
    "SymDim",
    "TensorType",
    "Value",
    "__version__",
    "compile",
    "diff",
    "list_passes",
    "list_pipelines",
    "load",
    "optimize",
    "trace",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from tgraph.api import CompiledModel, InputError, compile
    from tgraph.artifact import ArtifactError, load
    from tgraph.frontend import FrontendError, trace
    from tgraph.ir import DType, Graph, IRError, Node, SymDim, TensorType, Value
    from tgraph.passes.manager import PassError, PipelineError, diff, optimize
    from tgraph.passes.registry import list_passes, list_pipelines
