"""fp32 linears of an inference-only torch program on oneDNN, each weight packed once (CPU).

``F.linear`` on an x86 build of torch is MKL's sgemm, which on the AMD EPYC of session 9
ran 1.7x slower than oneDNN on a prepacked weight at one row (decode) and 2.3-2.7x slower
at 128 rows (prefill); the outputs differed by a few 1e-6
(``python tools/torch_linear_kernels.py``, docs/performance.md). oneDNN's linear on a
weight reordered once into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``
then ``_linear_pointwise``, what torch.compile's CPU backend emits for frozen weights) is
in every x86 build of torch.

Only programs that never train take it: the packed weight is a snapshot (an optimizer step
on the model would not reach it) and the op has no gradient for it. The generation step
is one (``generate`` and the plain forward on the step run under inference mode), so
``tgraph/generation/compile.py`` lowers it with ``pack_linears=True``; ``tgraph.compile`` of
a plain forward keeps ``F.linear`` on the model's own parameters.

The packed buffer is then the program's only copy of the weight: the IR graph's array of
it is released (a stand-in of its shape) and rebuilt exactly from the packed buffer when
the graph is read or saved (``release``/``restore``, as torch_quant does for int4). The
program's other model tensors are copies of its own too (``_ProgramBuilder._snapshot``),
so nothing it holds keeps the model's (often memory-mapped) storage alive: the 336M Llama's
step held 1332 MiB after the model was dropped, 1.04x its fp32 weights (docs/generation.md).
"""

from __future__ import annotations

from typing import Any

import torch

from tgraph.ir import DType, Node, Value

from .torch_quant import is_stand_in, release_const, shared

PACK_ROWS = 128  # the rows oneDNN picks the layout for: as fast at 1 row as a 1-row layout
# (graph value, its packed buffer under program.consts) per packed weight
OneDNNSources = list[tuple[Value, str]]


def available(device: torch.device) -> bool:
    """Whether this torch has oneDNN's packed linear for ``device`` (CPU builds on x86)."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                  ) -> torch.Tensor:  # fmt: skip
    """``F.linear(x, w, bias)`` with ``weight`` packed by ``_reorder_linear_weight``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def emit_onednn_linear(builder: Any, node: Node) -> bool:
    """Emit an fp32 ``linear`` with a constant 2-D weight on oneDNN's packed kernel; False
    (nothing emitted) for any other node."""
    if node.op != "linear":
        return False
    x, w = node.inputs[0], node.inputs[1]
    if w.const is None or w.dtype is not DType.float32 or x.dtype is not DType.float32:
        return False
    if len(w.shape) != 2:
        return False
    from .torch_backend import _fits, _identifier

    tensor = builder.params.get(w.name)
    if tensor is None or not _fits(tensor, w):
        tensor = shared(w.const)  # the reorder below copies it
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(tensor.detach().contiguous(), PACK_ROWS)
    name = _identifier(f"{w.name}_onednn", builder.const_names)
    builder.root.consts.register_buffer(name, packed)
    builder.onednn.append((w, name))
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    args = (builder.value(x), builder.fx.get_attr(f"consts.{name}"),
            None if bias is None else builder.value(bias))  # fmt: skip
    call = builder.fx.create_node("call_function", onednn_linear, args, {},
                                  name=_identifier(node.outputs[0].name, set()))  # fmt: skip
    builder.env[id(node.outputs[0])] = call
    return True


def release(sources: OneDNNSources) -> None:
    """Drop the graph's own arrays of the weights the program holds packed (stand-ins,
    torch_quant.release_const)."""
    for value, _name in sources:
        release_const(value)


def restore(program: Any, sources: OneDNNSources) -> None:
    """Rebuild the graph's arrays from the packed buffers (exactly: a reorder, no rounding)."""
    for value, name in sources:
        if is_stand_in(value):
            value.const = getattr(program.consts, name).to_dense().numpy()


def refuse_pickle(program: Any) -> None:
    """oneDNN's packed tensors have no storage to pickle: say what to do instead."""
    if program.meta.get("onednn_linears"):
        raise TypeError(
            f"torch program {type(program).__name__} holds oneDNN-packed linear weights, which "
            "do not pickle; save the compiled model with .save(path) and tgraph.load(path)"
        )
