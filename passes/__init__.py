"""Optimization passes. Importing this package registers every pass and named pipeline.

Each pass lives in its own module here; every module is imported below, so adding a file
with a ``@register("name")`` class is all it takes to make a pass available.
"""

import importlib
import pkgutil

from tgraph.passmanager import register_pipeline

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

register_pipeline("none", "", "no passes")
register_pipeline(
    "default",
    "dce",
    "inference: cleanup, constant folding, fusions and layout",
)
register_pipeline(
    "training",
    "dce",
    "like default, but never bakes trainable parameters into constants",
)
