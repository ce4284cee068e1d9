"""ATen op -> IR translation table.

Each translator takes the translation context and the FX node's args/kwargs (schema
names) and returns the IR value(s). Shapes that torch.export already computed (view
targets, expand sizes, split sizes) are read from the node's metadata, so no ``-1`` or
size arithmetic survives into the IR. An op missing here fails tracing with its name.

One module per family, mirroring tgraph/ir/ops/: ``elementwise``, ``shape_ops``, ``scatter``,
``reduce`` (with creation ops), ``nn`` (``conv_transpose`` beside it), ``einsum`` (a
decomposition), ``grids`` (meshgrid, eye, outer), ``moe`` (tgraph's own experts op), ``complex_pairs`` (complex values as pairs
of real ones), ``sampling`` (random ops, refused) and ``vision`` (batch norm, pooling, mobile
activations); ``base`` holds the table, the ``@aten`` decorator and the shared helpers.
"""

from tgraph.frontend.aten import (  # noqa: F401  (fill the table)
    complex_pairs,
    conv_transpose,
    einsum,
    elementwise,
    grids,
    moe,
    nn,
    reduce,
    sampling,
    scatter,
    shape_ops,
    vision,
)
from tgraph.frontend.aten.base import TRANSLATORS, Translator, aten

__all__ = ["TRANSLATORS", "Translator", "aten"]
