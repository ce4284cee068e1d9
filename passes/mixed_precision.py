"""Mixed precision: matmuls, linear and attention in bf16 or fp16; accuracy-critical ops in fp32.

Each node gets one of three treatments:

- compute ops (:data:`COMPUTE`) run in the low dtype: their float32 inputs are cast down
  (constant weights become new low-precision constants, converted once here);
- follow ops (:data:`FOLLOW`: shape ops, GELU, rotary, elementwise ops between low values)
  run in the low dtype when their activation inputs already are, so a chain
  ``linear -> gelu -> linear`` needs no casts in between;
- everything else (norms, softmax, reductions, residual adds with an fp32 operand, ...) stays
  float32 and reads a float32 copy of a low value.

Casts sit at region boundaries, one per value and target dtype, right after the value is
made; a low value that is itself a cast of a float32 value is read back as that value.
Graph inputs and outputs keep their dtypes.
"""

from __future__ import annotations

import fnmatch
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from tgraph.ir import DType, Graph, Node, Value
from tgraph.passes.manager import Pass, PassResult, PipelineError, register

from .quantize import layer_name

_LOW = {"bf16": DType.bfloat16, "bfloat16": DType.bfloat16, "fp16": DType.float16}
_LOW.update({"f16": DType.float16, "float16": DType.float16})

# Ops that run in the low dtype (fp32 accumulation is the kernels' contract), and the input
# index of their additive mask, if any.
COMPUTE = {"matmul": None, "linear": None, "attention": 3, "qkv_attention": 3, "sdpa": 3}

# Ops that follow their inputs into the low dtype, with the indices of their activation
# inputs (None: all of them). Other float inputs (rotary's cos/sin tables, a bias) are cast
# down to match.
FOLLOW: dict[str, tuple[int, ...] | None] = {
    **{op: (0,) for op in "reshape permute expand slice squeeze unsqueeze split pad".split()},
    **{op: (0,) for op in "identity dropout tril triu gather index gather_elements".split()},
    **{op: (0,) for op in "gelu bias_gelu silu relu tanh sigmoid neg abs clamp rotary".split()},
    **{op: None for op in "concat add sub mul maximum minimum".split()},
    "where": (1, 2),
}

# Ops kept in float32 whatever their inputs, and why.
_NORM = "normalization kept fp32 for accuracy"
KEEP_FP32 = {
    **{op: _NORM for op in "layer_norm rms_norm skip_layer_norm skip_rms_norm".split()},
    **{op: "softmax kept fp32 for accuracy" for op in ("softmax", "log_softmax")},
    **{
        op: "reduction kept fp32 (accumulates)"
        for op in "reduce_sum reduce_mean reduce_prod var cumsum logsumexp scatter_reduce".split()
    },
}
_UNSAFE = "not safe in low precision (range or accuracy)"
for _op in "exp log pow sqrt rsqrt reciprocal div erf sin cos".split():
    KEEP_FP32[_op] = _UNSAFE


@register("mixed-precision")
class MixedPrecision(Pass):
    """Run matmuls, linear and attention in bf16/fp16; norms, softmax, reductions stay fp32.

    Options:
        dtype: ``bf16`` (default) or ``fp16``.
        keep_trainable: leave an op in float32 when it reads a trainable weight, instead of
            baking the weight into a new low-precision constant.
        keep: ``|``-separated fnmatch patterns of layers (a linear's weight name without
            ``.weight``) to leave in float32; the accuracy budget uses it.
    """

    lossy = True  # compression: outputs change within the tolerance in docs/passes.md

    def __init__(self, dtype: str = "bf16", keep_trainable: bool = False, keep: str = ""):
        if str(dtype) not in _LOW:
            raise PipelineError(f"pass mixed-precision: dtype {dtype!r}; want bf16 or fp16")
        self.low = _LOW[str(dtype)]
        self.keep_trainable = bool(keep_trainable)
        self.keep_layers = tuple(p for p in str(keep).split("|") if p)

    def approximate_linear(
        self, x: np.ndarray, w: np.ndarray, hessian: np.ndarray | None = None
    ) -> np.ndarray:
        # Inputs and weights rounded to the low type, products summed in fp32, the result
        # rounded: the IR's rule for a low-precision matmul.
        low = self.low.numpy
        xr, wr = x.astype(low).astype(np.float32), w.astype(low).astype(np.float32)
        return np.matmul(xr, wr.T).astype(low).astype(np.float32)

    def run(self, graph: Graph) -> PassResult:
        rewrite = _Rewrite(graph, self.low)
        layers: list[str] = []
        for node in list(graph.nodes):
            if self._plan(node, rewrite):
                if node.op == "linear" and node.inputs[1].const is not None:
                    layers.append(layer_name(node.inputs[1]))
                rewrite.to_low(node)
            else:
                rewrite.keep(node)
        rewrite.finish()
        stats = rewrite.stats()
        stats["layers"] = layers
        return PassResult(rewrite.changed, stats)

    def _plan(self, node: Node, rw: _Rewrite) -> bool:
        """Whether ``node`` should run in the low dtype. The ``*_reason`` helpers return
        None to convert, a reason to keep float32 (recorded), or "" to keep it silently."""
        if node.op in COMPUTE:
            reason = self._compute_reason(node, rw)
        elif node.op in FOLLOW:
            reason = _follow_reason(node, rw)
        else:
            reason = _other_reason(node, rw)
        if reason:
            rw.kept[node.op][reason] += 1
        return reason is None

    def _compute_reason(self, node: Node, rw: _Rewrite) -> str | None:
        mask_index = COMPUTE[node.op]
        for i, v in enumerate(node.inputs):
            if v is None or i == mask_index:
                continue
            if v.dtype is rw.low:
                return "" if i == 0 else f"input {i} is {v.dtype} but input 0 is not"
            if not v.dtype.is_float:
                return f"{node.op} input is {'integer' if v.dtype.is_int else v.dtype}"
            if v.dtype is not DType.float32:
                return f"{node.op} input is {v.dtype}, not f32"
            if self.keep_trainable and v.trainable:
                return f"weight @{v.name} is trainable (keep_trainable=true)"
        if node.op == "linear" and self.keep_layers and node.inputs[1].const is not None:
            layer = layer_name(node.inputs[1])
            if any(fnmatch.fnmatchcase(layer, p) for p in self.keep_layers):
                return f"layer {layer} kept in full precision (keep option / accuracy budget)"
        return None


def _other_reason(node: Node, rw: _Rewrite) -> str:
    if node.op in KEEP_FP32:
        return KEEP_FP32[node.op]
    if node.op != "cast" and any(rw.is_low(v) for v in node.inputs):
        return f"no low-precision rule for {node.op}"
    return ""  # nothing low reaches it: not worth a record


def _follow_reason(node: Node, rw: _Rewrite) -> str | None:
    indices = FOLLOW[node.op]
    acts = [
        v
        for i, v in enumerate(node.inputs)
        if v is not None and v.dtype.is_float and (indices is None or i in indices)
    ]
    if not acts or node.outputs[0].dtype is rw.low:
        return ""
    if not any(rw.is_low(v) for v in acts):
        return ""  # a float32 chain: nothing to follow
    for v in acts:
        if not rw.is_low(v) and v.const is None:
            return f"operand %{v.name} is fp32 (residual or fp32 stream)"
    for v in node.inputs:
        if v is not None and v.dtype.is_float and v.dtype not in (DType.float32, rw.low):
            return f"operand %{v.name} is {v.dtype}"
    return None


class _Rewrite:
    """The state of one run: replaced values, cached casts and constants, counters."""

    def __init__(self, graph: Graph, low: DType):
        self.graph = graph
        self.low = low
        self.suffix = str(low)
        self.replaced: dict[int, Value] = {}  # id(old value) -> its low-precision replacement
        self.old_nodes: list[Node] = []
        self.casts: dict[tuple[int, DType], Value] = {}
        self.cast_of: dict[int, Value] = {}  # id(low cast) -> the float32 value it rounds
        self.consts: dict[int, Value] = {}
        self.masks: dict[int, Value] = {}
        self.base: dict[int, str] = {}  # id(replacement) -> the name it will take
        self.converted: Counter[str] = Counter()
        self.followed: Counter[str] = Counter()
        self.kept: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.cast_counts: Counter[str] = Counter()
        self.changed = False

    def is_low(self, v: Value | None) -> bool:
        return v is not None and (id(v) in self.replaced or v.dtype is self.low)

    # -- rewriting ---------------------------------------------------------------------------

    def to_low(self, node: Node) -> None:
        """Replace ``node`` by a copy that reads low-precision inputs."""
        mask_index = COMPUTE.get(node.op)
        inputs = [
            self.mask(v) if i == mask_index else self.low_value(v)
            for i, v in enumerate(node.inputs)
        ]
        meta = {**node.meta, "precision": self.suffix}
        names = [f"{v.name}.{self.suffix}" for v in node.outputs]
        new = self.graph.create_node(
            node.op, inputs, node.attrs, names=names, meta=meta, before=node
        )
        for old, nv in zip(node.outputs, new.outputs):
            self.replaced[id(old)] = nv
            self.base[id(nv)] = old.name
        self.old_nodes.append(node)
        (self.converted if node.op in COMPUTE else self.followed)[node.op] += 1

    def keep(self, node: Node) -> None:
        """Point a float32 node's inputs that were replaced at float32 copies."""
        for i, v in enumerate(node.inputs):
            if v is not None and id(v) in self.replaced:
                node.replace_input(i, self.wide_value(self.replaced[id(v)]))

    def finish(self) -> None:
        """Drop the replaced nodes; replacements take their names, and a graph output keeps
        its name and dtype through a cast back to float32."""
        g = self.graph
        outputs: list[tuple[Value, str]] = []
        for i, v in enumerate(g.outputs):
            if id(v) in self.replaced:
                g.outputs[i] = self.wide_value(self.replaced[id(v)])
                outputs.append((g.outputs[i], v.name))
        for node in reversed(self.old_nodes):
            names = [v.name for v in node.outputs]
            node.remove()
            for name, old in zip(names, node.outputs):
                if all(name != taken for _, taken in outputs):
                    g.rename(self.replaced[id(old)], name)
        for v, name in outputs:
            g.rename(v, name)
        self.changed = bool(self.old_nodes)

    # -- values ------------------------------------------------------------------------------

    def low_value(self, v: Value | None) -> Value | None:
        """``v`` in the low dtype: a replacement, a converted constant or a cast."""
        if v is None or not v.dtype.is_float or v.dtype is self.low:
            return v
        if id(v) in self.replaced:
            return self.replaced[id(v)]
        if v.const is not None:
            return self.low_const(v)
        low = self.cast(v, self.low)
        self.cast_of[id(low)] = v
        return low

    def wide_value(self, v: Value) -> Value:
        """A float32 copy of the low value ``v`` (the value it was rounded from, if any)."""
        return self.cast_of.get(id(v)) or self.cast(v, DType.float32)

    def mask(self, v: Value | None) -> Value | None:
        """An additive float mask in the low dtype, clamped to its finite range (a -inf or
        float32-min mask would overflow to -inf, and a fully masked row would give NaN)."""
        if v is None or v.dtype is DType.bool or self.is_low(v):
            return self.low_value(v)
        if v.const is not None:
            return self.low_const(v)
        if id(v) not in self.masks:
            lo = float(np.finfo(np.float16).min) if self.low is DType.float16 else _BF16_MIN
            clamp = self.graph.create_node(
                "clamp", [v], {"min": lo}, names=[f"{v.name}.clamped"], **_place(self.graph, v)
            )
            self.masks[id(v)] = self.cast(clamp.output, self.low)
        return self.masks[id(v)]

    def low_const(self, v: Value) -> Value:
        if id(v) not in self.consts:
            array = _narrow(np.asarray(v.const), self.low)
            hint = f"{v.name}.{self.suffix}"
            self.consts[id(v)] = self.graph.add_const(array, self.low, hint=hint)
            self.cast_counts["constants"] += 1
        return self.consts[id(v)]

    def cast(self, v: Value, dtype: DType) -> Value:
        key = (id(v), dtype)
        if key not in self.casts:
            name = f"{self.base.get(id(v), v.name)}.{dtype}"
            node = self.graph.create_node(
                "cast", [v], {"dtype": dtype}, names=[name], **_place(self.graph, v)
            )
            node.meta["rule"] = "mixed-precision"
            self.casts[key] = node.output
            self.cast_counts[f"to_{dtype}"] += 1
        return self.casts[key]

    def stats(self) -> dict[str, Any]:
        return {
            "dtype": self.suffix,
            "converted": dict(sorted(self.converted.items())),
            "followed": dict(sorted(self.followed.items())),
            "kept_fp32": {op: dict(sorted(r.items())) for op, r in sorted(self.kept.items())},
            "casts": sum(n for k, n in self.cast_counts.items() if k != "constants"),
            "cast_targets": dict(sorted(self.cast_counts.items())),
            "regions": _regions(self.graph, self.low),
        }


_BF16_MIN = -3.3895313892515355e38  # the most negative finite bfloat16


def _place(graph: Graph, v: Value) -> dict[str, Node | None]:
    """Where a node reading ``v`` goes so that every later reader can share it: right after
    its producer, or first in the graph for inputs and constants."""
    if v.producer is not None:
        return {"after": v.producer}
    return {"before": next(iter(graph.nodes), None)}


def _narrow(array: np.ndarray, low: DType) -> np.ndarray:
    """``array`` rounded to ``low``, finite values clamped into its finite range."""
    info = np.finfo(np.float16) if low is DType.float16 else None
    top = float(info.max) if info is not None else -_BF16_MIN
    clipped = np.where(np.isfinite(array), np.clip(array, -top, top), array)
    return clipped.astype(low.numpy)


def _regions(graph: Graph, low: DType) -> int:
    """Connected groups of nodes that compute in ``low`` (casts not counted)."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for node in graph.nodes:
        if node.op != "cast" and any(v.dtype is low for v in node.outputs):
            parent[id(node)] = id(node)
            for v in node.inputs:
                if v is not None and v.dtype is low and v.producer is not None:
                    if id(v.producer) in parent:
                        parent[find(id(v.producer))] = find(id(node))
    return len({find(i) for i in parent})
