"""tgraph: a compute-graph compiler for Transformer models.

import tgraph
cm = tgraph.compile(model, example_inputs, backend="reference")
out = cm(*args)
g = tgraph.trace(model, example_inputs)
print(g.dump())
"""

from .api import CompiledModel, InputError, compile
from .artifact import ArtifactError, load
from .frontend import FrontendError, trace
from .ir import DType, Graph, IRError, Node, SymDim, TensorType, Value
from .passmanager import PassError, PipelineError, diff, list_passes, optimize

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "CompiledModel",
    "DType",
    "FrontendError",
    "Graph",
    "IRError",
    "InputError",
    "PassError",
    "PipelineError",
    "Node",
    "SymDim",
    "TensorType",
    "Value",
    "__version__",
    "compile",
    "diff",
    "list_passes",
    "load",
    "optimize",
    "trace",
]
