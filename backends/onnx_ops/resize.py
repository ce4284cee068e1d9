"""ONNX lowering of ``resize`` (tgraph/ir/ops/resize.py): one ``Resize`` node whose
coordinate mode (and cubic coefficient) reproduce torch's ``interpolate``."""

from __future__ import annotations

import numpy as np

from tgraph.backends.onnx_ops.base import in_type, lowers
from tgraph.ir.ops.resize import CUBIC_A


@lowers("resize")
def _resize(ctx, node, x):
    a = node.attrs
    if a["mode"] == "nearest":  # torch: src = floor(dst / scale)
        modes = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}  # fmt: skip
    elif a["align_corners"]:
        modes = {"mode": a["mode"], "coordinate_transformation_mode": "align_corners"}
    else:  # torch: src = (dst + 0.5) / scale - 0.5 (linear: clamped at 0; ORT clamps too)
        modes = {"mode": a["mode"], "coordinate_transformation_mode": "half_pixel"}
    if a["mode"] == "cubic":  # torch's coefficient; taps past the edge read the edge
        modes.update(cubic_coeff_a=CUBIC_A, exclude_outside=0)
    if a["scales"]:  # the user's factors, so ORT maps coordinates with them as torch does
        scales = ctx.const(np.asarray([1.0, 1.0, *a["scales"]], dtype=np.float32))
        return ctx.op("Resize", [x, "", scales], **modes)
    sizes = ctx.shape((*in_type(node, 0).shape[:2], *a["size"]))
    return ctx.op("Resize", [x, "", "", sizes], **modes)
