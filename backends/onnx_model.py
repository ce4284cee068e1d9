"""``to_onnx``: an optimized IR graph as one ONNX model (the lowering state is in
``onnx_lowering.py``, the per-op lowerings in ``onnx_ops/``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tgraph.ir import Graph, Value

from .errors import LoweringError
from .onnx_lowering import MS_DOMAIN, ONNX_DTYPE, OPSET, Lowering


def _value_info(v: Value, name: str) -> onnx.ValueInfoProto:
    dims: list[int | str | None] = []
    for d in v.shape:
        if isinstance(d, int):
            dims.append(d)
        elif d.is_symbol():
            dims.append(d.name)
        else:
            dims.append(None)  # an expression: leave the dim unnamed
    return helper.make_tensor_value_info(name, ONNX_DTYPE[v.dtype], dims)


def to_onnx(
    graph: Graph,
    *,
    fused_kernels: bool = True,
    external: dict[str, np.ndarray] | None = None,
    fold_at_load: bool = True,
    device: str = "cpu",
    load_only: set[str] | None = None,
    prepack: bool = False,
    in_place: bool = True,
    prepacked: set[str] | None = None,
) -> onnx.ModelProto:
    """Lower ``graph`` to an ONNX model.

    Args:
        graph: the (optimized) IR graph.
        fused_kernels: lower fused ops to ONNX Runtime contrib kernels and fused standard
            ops (MultiHeadAttention, Attention, SkipLayerNormalization, ...); False lowers
            them to subgraphs of elementary ops instead.
        external: when given, initializers of at least :data:`EXTERNAL_MIN_BYTES` are put
            into this dict (name -> array) instead of the model, which then only declares
            them as external data; ONNX Runtime takes them through
            ``SessionOptions.add_external_initializers`` without copying them through
            protobuf (seconds for BERT-base). Linear weights are then not stored
            transposed: a Transpose node reads the graph's own array and ONNX Runtime
            folds it at load into the MatMul's prepacked weight (with ``fold_at_load``:
            say False when the session runs without graph optimizations).
        device: the device whose execution provider will run the model ("cpu" or
            "cuda"). A few fused kernels are slower than their unfused form on one
            provider (``policy.SLOWER_FUSED``); those are lowered unfused there.
        load_only: when given, gets the names in ``external`` that ONNX Runtime only reads
            while loading (a Transpose it folds, a prepacked weight; every array when
            ``in_place`` is False): it is done with those once the session exists.
        prepack: with ``external``, lower a linear with a big constant weight to
            ``com.microsoft.FusedMatMul(transB=1)`` on the (out, in) array, which MLAS
            prepacks straight from it, instead of a folded Transpose + MatMul.
        in_place: the session reads external arrays where they are (a copy is taken of an
            array that views memory it does not own); False when it copies them at load
            (``ort_load.reads_after_load``): no copies, and every external array is load-only.
        prepacked: when given, gets the names in ``external`` that only FusedMatMul reads
            as its prepacked B (``ort_load.open_session`` may share them).

    Raises:
        LoweringError: an op has no lowering, naming the node.
    """
    from .onnx_ops import LOWERINGS
    from .policy import needs_fp32

    ctx = Lowering(graph, fused_kernels, external, device)
    ctx.fold_at_load = fold_at_load
    ctx.prepack = prepack
    ctx.in_place = in_place
    for node in graph.nodes:
        fn = LOWERINGS.get(node.op)
        if fn is None:
            raise LoweringError(
                f"the ONNX lowering has no rule for op {node.op!r} (node %{node.name}); "
                "use backend='reference' or 'torch', or add a lowering to backends/onnx_ops/"
            )
        with ctx.lowering(node):
            low = needs_fp32(node)
            if low is not None:
                result = ctx.lower_in_fp32(node, fn, low)
            else:
                result = fn(ctx, node, *[ctx.name(v) for v in node.inputs])
            ctx.bind(node, [result] if isinstance(result, str) else list(result))

    input_names = {v.name for v in graph.inputs}
    outputs = []
    taken: set[str] = set()
    for v in graph.outputs:
        name = ctx.name(v)
        if name in input_names or name in taken or v.const is not None:
            name = ctx.copy(name, v.name)  # an ONNX output must be a distinct node output
        taken.add(name)
        outputs.append(_value_info(v, name))

    onnx_graph = helper.make_graph(
        ctx.nodes,
        graph.name,
        [_value_info(v, v.name) for v in graph.inputs],
        outputs,
        initializer=ctx.finish([o.name for o in outputs]),
    )
    if load_only is not None:
        load_only.update(ctx.load_only)
    if prepacked is not None:
        prepacked.update(ctx.prepacked_only())
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="tgraph")
    if ctx.fp32_emulated:  # which 16-bit float nodes run in float32, visible in the file
        counts = ",".join(f"{op}:{n}" for op, n in sorted(ctx.fp32_emulated.items()))
        helper.set_model_props(model, {"tgraph.computed_in_fp32": counts})
    model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return model
