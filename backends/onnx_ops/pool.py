"""ONNX lowering of ``pool2d`` (tgraph/ir/ops/pool.py): MaxPool or AveragePool."""

from __future__ import annotations

from tgraph.backends.onnx_ops.base import lowers


@lowers("pool2d")
def _pool2d(ctx, node, x):
    a = node.attrs
    common = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
              "pads": list(a["padding"]) * 2, "ceil_mode": int(a["ceil_mode"])}  # fmt: skip
    if a["kind"] == "max":
        return ctx.op("MaxPool", [x], **common)
    return ctx.op("AveragePool", [x], count_include_pad=int(a["count_include_pad"]), **common)
