"""The tgraph model zoo: small, readable Transformer families with random weights.

Each family lives in one file (``gpt.py``, ``bert.py``, ...) with a dataclass config and the
model; :mod:`.zoo` registers them under names such as ``"gpt-tiny"`` and ``"bert-base"``, and
:mod:`.checkpoint` saves and loads them.
"""

from .bert import Bert, BertConfig
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .transformer import TransformerConfig, TransformerEncoderModel
from .vit import ViT, ViTConfig
from .zoo import FAMILIES, ZOO, UnknownModelError, build, example_inputs, list_zoo

__all__ = [
    "FAMILIES",
    "GPT",
    "ZOO",
    "Bert",
    "BertConfig",
    "CheckpointError",
    "GPTConfig",
    "Llama",
    "LlamaConfig",
    "TransformerConfig",
    "TransformerEncoderModel",
    "UnknownModelError",
    "ViT",
    "ViTConfig",
    "build",
    "example_inputs",
    "list_zoo",
    "load_checkpoint",
    "save_checkpoint",
]
