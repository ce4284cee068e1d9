"""The torch.export frontend: PyTorch models -> tgraph IR."""

from .aten import TRANSLATORS
from .convert import UnsupportedError, ir_dtype, to_numpy, to_torch, torch_dtype
from .export import FrontendError, normalize_inputs
from .trace import trace

__all__ = [
    "TRANSLATORS",
    "FrontendError",
    "UnsupportedError",
    "ir_dtype",
    "normalize_inputs",
    "to_numpy",
    "to_torch",
    "torch_dtype",
    "trace",
]
