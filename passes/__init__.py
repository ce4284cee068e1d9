"""Optimization passes. Importing this package registers every pass and named pipeline.

Each pass lives in its own module here; every module is imported below, so adding a file
with a ``@register("name")`` class is all it takes to make a pass available.
"""

import importlib
import pkgutil

from tgraph.passmanager import register_pipeline

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

# Cleanup first (so fusions meet canonical patterns), then fusions from the leaves up
# (norms, GELU, linear, rotary, attention), then the fusions that need the fused ops
# (skip-norm, qkv merge, layout), each stage followed by its visible cleanup.
_DEFAULT = [
    "simplify", "fold-constants", "cse", "dce",
    "fuse-layernorm", "fuse-gelu", "fuse-linear", "fuse-rotary", "fuse-attention",
    "simplify", "dce",
    "fuse-skip-layernorm", "merge-qkv", "fuse-qkv-attention", "layout",
    "simplify", "cse", "dce",
]  # fmt: skip
_KEEP = {"fold-constants", "fuse-linear", "layout"}  # passes that can bake weights
_TRAINING = [
    f"{p}{{keep_trainable=true}}" if p in _KEEP else p for p in _DEFAULT if p != "merge-qkv"
]

register_pipeline("none", "", "no passes")
register_pipeline(
    "default", ",".join(_DEFAULT), "inference: cleanup, constant folding, fusions and layout"
)
register_pipeline(
    "training",
    ",".join(_TRAINING),
    "like default, but never bakes trainable parameters into constants (no merge-qkv)",
)
