"""Optimization passes. Importing this package registers every pass and named pipeline.

Each pass lives in its own module here; every module is imported below, so adding a file
with a ``@register("name")`` class is all it takes to make a pass available. The pass
machinery lives here too: ``manager`` (registry, pipelines, the pass manager and its
instruments), ``rewrite`` (the pattern-rewrite engine the fusions share) and ``pipelines``
(the named pipelines).
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
