"""Weight compression of ``linear`` layers: dynamic int8 and weight-only int4.

``quantize-int8`` turns ``linear(x, W, b)`` with a constant fp32 ``W`` into
``linear_int8(x, Wq, w_scale, b)``: symmetric int8 weights, one scale per output channel,
and activations quantized per token at run time (see ``tgraph/ir/ops/quant.py``).
``quantize-int4`` turns it into ``linear_int4``: 4-bit weights with one scale per block of
``block`` input features, computed in fp32 (weight-only; it saves memory and bandwidth).

A layer is named by its weight without the ``.weight`` suffix (``h.0.mlp.c_fc``), the
module path for layers traced from a model. ``keep=a|b*`` (``|``-separated fnmatch
patterns) leaves matching layers in full precision: the accuracy budget
(``tgraph/accuracy.py``) uses it to fall back layer by layer. Every layer left in fp32 is
recorded with its reason in the pass's "why not fused" table (``stats["rejected"]``), and
``stats["converted"]`` lists the layers converted.

``head=false`` leaves the LM head (a linear whose output is a graph output, through
reshapes at most) for a later pass: the ``int4`` pipeline gives it int8 weights
(``quantize-int8-weight``, ``passes/quantize_weight.py``). ``compute=int8`` (int4) lets the
backend round activations to int8 per block (see ``linear_int4`` in
``tgraph/ir/ops/quant.py``): ONNX Runtime's fast ``MatMulNBits`` path.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from tgraph.ir import DType, Graph, Node, Value
from tgraph.ir.ops.quant import (
    COMPUTE,
    INT8_MAX,
    int4_linear_reference,
    int8_linear_reference,
)
from tgraph.passes.manager import PassResult, PipelineError, register
from tgraph.passes.rewrite import Builder, Match, P, RewritePass, Rule

from ._gptq import gptq_codes

INT4_MAX = 7
# graph.meta key of calibration statistics: {layer name: H = X^T X of its input, (K, K)},
# put there by tgraph.calibration before the compression passes run (docs/compression.md).
CALIBRATION = "calibration"


def layer_name(w: Value) -> str:
    """The layer a linear weight belongs to: its name without a trailing ``.weight``."""
    name = w.name.removesuffix(".T")
    return name.removesuffix(".weight")


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 codes and fp32 scales of a (N, K) weight."""
    w = w.astype(np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


MIN_BLOCK = 16  # the smallest block MatMulNBits takes


def layer_block(block: int, k: int) -> int:
    """The block a layer with ``k`` input features gets: ``block``, halved (down to 16)
    while that pads ``k`` further than blocks of 16 would. Blocks of 128 on k = 64 would
    store 128 codes per row for 64 weights; k = 96 gets 32, k = 1024 or 2816 keeps 128."""
    least = -(-k // MIN_BLOCK) * MIN_BLOCK
    while block > MIN_BLOCK and -(-k // block) * block > least:
        block //= 2
    return block


def quantize_int4(w: np.ndarray, block: int, search: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise int4 of a (N, K) weight: packed codes (N, blocks, block/2) u8, scales (N, blocks).

    ``search=False``: scale ``max|w| / 7`` (codes -7..7). ``search=True``: per block, the
    scale of :data:`_CANDIDATES` with the least squared error, among them the signed
    extreme mapped to -8 (all 16 codes used) and clipped ones (outliers give way to the rest).
    """
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w
    grouped = padded.reshape(n, blocks, block)
    scale = int4_scales(grouped, search)
    codes = np.clip(np.round(grouped / scale[..., None]), -8, INT4_MAX)
    return pack_int4_codes(codes.reshape(n, -1), block), scale


def int4_scales(grouped: np.ndarray, search: bool) -> np.ndarray:
    """Scales (N, G) of weights grouped (N, G, block): ``max|w| / 7`` or the searched ones."""
    amax = np.abs(grouped).max(axis=-1)
    scale = np.where(amax > 0, amax / INT4_MAX, 1.0).astype(np.float32)
    return _best_scales(grouped, scale) if search else scale


def pack_int4_codes(codes: np.ndarray, block: int) -> np.ndarray:
    """Codes (N, K) in -8..7 as the IR's packed (N, blocks, block/2) u8 (low nibble first,
    K padded with zero weights to whole blocks)."""
    n, k = codes.shape
    blocks = -(-k // block)
    u = np.full((n, blocks * block), 8, np.uint8)
    u[:, :k] = (codes.astype(np.int16) + 8).astype(np.uint8)
    u = u.reshape(n, blocks, block)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def quantize_int4_gptq(
    w: np.ndarray, hessian: np.ndarray, block: int, search: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_int4` with GPTQ error feedback on the calibration Hessian ``X^T X``
    (``passes/_gptq.py``); the same packed layout and scale rule."""
    codes, scale = gptq_codes(w, hessian, block, lambda g: int4_scales(g, search))
    return pack_int4_codes(codes, block), scale


# Scale candidates of the search: (base, factor); "absmax" is max|w| / 7, "signed" maps the
# block's largest-magnitude weight to code -8 (scale = -w_extreme / 8).
_CANDIDATES = [("absmax", f) for f in (1.0, 0.9, 0.8)] + [
    ("signed", f) for f in (1.0, 0.95, 0.9, 0.85, 0.8)
]


def _best_scales(grouped: np.ndarray, absmax_scale: np.ndarray) -> np.ndarray:
    """Per block (N, blocks, B), the candidate scale with the least squared error."""
    pick = np.abs(grouped).argmax(axis=-1)[..., None]
    extreme = np.take_along_axis(grouped, pick, axis=-1)[..., 0]
    signed = np.where(extreme != 0, -extreme / 8, 1.0).astype(np.float32)
    best, best_err = absmax_scale, None
    for base, f in _CANDIDATES:
        s = ((absmax_scale if base == "absmax" else signed) * np.float32(f))[..., None]
        err = np.square(np.clip(np.round(grouped / s), -8, INT4_MAX) * s - grouped).sum(-1)
        if best_err is None:
            best, best_err = s[..., 0], err
        else:
            better = err < best_err
            best, best_err = np.where(better, s[..., 0], best), np.minimum(err, best_err)
    return best.astype(np.float32)


# Ops between an LM head's linear and the graph output (logits reshaped or squeezed).
_LAYOUT_ONLY = {"reshape", "squeeze", "unsqueeze", "cast"}


def is_head(graph: Graph, node: Node) -> bool:
    """True when ``node``'s output reaches a graph output through layout-only ops."""
    v = node.outputs[0]
    while not any(o is v for o in graph.outputs):
        users = v.users()
        if len(users) != 1 or users[0].op not in _LAYOUT_ONLY:
            return False
        v = users[0].outputs[0]
    return True


def check_compute(pass_name: str, compute: str) -> str:
    if compute not in COMPUTE:
        raise PipelineError(f"{pass_name}: compute={compute}; want one of {', '.join(COMPUTE)}")
    return compute


def check_block(pass_name: str, block: int | str) -> int:
    block = int(block)
    if block < MIN_BLOCK or block & (block - 1):
        raise PipelineError(f"{pass_name}: block={block}; want a power of two >= 16")
    return block


class _QuantizeLinear(RewritePass):
    """Shared matching: which linear layers may be compressed, and why not."""

    lossy = True

    def __init__(
        self,
        max_matches: int | None = None,
        keep: str = "",
        keep_trainable: bool = False,
        head: bool = True,
    ):
        super().__init__(max_matches)
        self.keep = tuple(p for p in str(keep).split("|") if p)
        self.keep_trainable = bool(keep_trainable)
        self.head = bool(head)
        self._graph: Graph | None = None
        self.rules = (
            Rule(
                name=self.rule_name,
                pattern=P.op("linear", P.var("x"), P.var("w")),
                check=self._reason,
                replace=lambda b, m: self._replace(b, m, None),
            ),
            Rule(
                name=f"{self.rule_name}-bias",
                pattern=P.op("linear", P.var("x"), P.var("w"), P.var("b")),
                check=self._reason,
                replace=lambda b, m: self._replace(b, m, m["b"]),
            ),
        )

    rule_name = ""

    def _reason(self, m: Match) -> str | None:
        x, w = m["x"], m["w"]
        if w.const is None:
            return f"weight %{w.name} is computed at run time, not a constant"
        layer = layer_name(w)
        if self.keep_trainable and w.trainable:
            return f"weight @{w.name} is a trainable parameter (keep_trainable)"
        if x.dtype != DType.float32 or w.dtype != DType.float32:
            return f"input/weight dtypes {x.dtype}/{w.dtype}; quantization starts from f32"
        bias = m.get("b")
        if bias is not None and (bias.const is None or bias.dtype != DType.float32):
            return "bias is not an f32 constant"
        if any(fnmatch.fnmatchcase(layer, p) for p in self.keep):
            return f"layer {layer} kept in full precision (keep option / accuracy budget)"
        if not self.head and self._graph is not None and is_head(self._graph, m.root):
            return f"layer {layer} is the LM head (head=false): left to a later pass"
        return None

    def _replace(self, b: Builder, m: Match, bias: Value | None) -> Value:  # pragma: no cover
        raise NotImplementedError

    def _record(self, b: Builder, m: Match) -> str:
        """Note the converted layer (and whether it is the LM head); return its name."""
        layer = layer_name(m["w"])
        self.applied[-1]["layer"] = layer
        if self._graph is not None and is_head(self._graph, m.root):
            self.applied[-1]["head"] = layer
        return layer

    def run(self, graph) -> PassResult:
        self._graph = graph
        try:
            result = super().run(graph)
        finally:
            self._graph = None
        result.stats["converted"] = [site["layer"] for site in self.applied if "layer" in site]
        result.stats["head"] = [site["head"] for site in self.applied if "head" in site]
        result.stats["layers"] = result.stats["converted"]  # what every compression pass reports
        return result


# -- mixture-of-experts layers (moe_experts) -----------------------------------------------------


def experts_rule(name: str, p: _QuantizeLinear) -> Rule:
    """The rule of a weight pass ``p`` for ``moe_experts``: its ``_experts_reason`` and
    ``_replace_experts``."""
    pattern = P.op("moe_experts", P.var("x"), P.var("index"), P.var("weights"), P.var("w_in"),
                   P.var("w_out"), other_inputs=True)  # fmt: skip
    return Rule(name=name, pattern=pattern, check=p._experts_reason, replace=p._replace_experts)


def experts_reason(p: _QuantizeLinear, m: Match) -> str | None:
    """Why a ``moe_experts`` node keeps fp32 experts (the checks every weight pass shares)."""
    node = m.root
    weights = [m["w_in"], m["w_out"], *(v for v in node.inputs[5:] if v is not None)]
    for w in weights:
        if w.const is None or w.dtype != DType.float32:
            return f"expert weight %{w.name} is not an f32 constant"
        if p.keep_trainable and w.trainable:
            return f"expert weight @{w.name} is a trainable parameter (keep_trainable)"
    if m["x"].dtype != DType.float32:
        return f"input dtype {m['x'].dtype}; quantization starts from f32"
    layer = layer_name(m["w_in"])
    if any(fnmatch.fnmatchcase(layer, pattern) for pattern in p.keep):
        return f"experts {layer} kept in full precision (keep option / accuracy budget)"
    return None


def interleaved_gate_up(m: Match) -> tuple[np.ndarray, np.ndarray | None]:
    """The experts' w_in (E, N, H) and b_in (E, N) with gate and up rows interleaved (gate0,
    up0, gate1, ...: ORT's QMoE SwiGLU layout), unchanged when ungated or interleaved."""
    node, a = m.root, m.root.attrs
    w_in = np.asarray(m["w_in"].const, np.float32)
    b_in = node.inputs[5] if len(node.inputs) > 5 else None
    b_in = None if b_in is None else np.asarray(b_in.const, np.float32)
    if a["gated"] and not a["interleaved"]:
        experts, n, hidden = w_in.shape
        w_in = w_in.reshape(experts, 2, n // 2, hidden).transpose(0, 2, 1, 3)
        w_in = np.ascontiguousarray(w_in).reshape(experts, n, hidden)
        if b_in is not None:
            b_in = np.ascontiguousarray(b_in.reshape(experts, 2, n // 2).transpose(0, 2, 1))
            b_in = b_in.reshape(experts, n)
    return w_in, b_in


def expert_biases(b: Builder, m: Match, b_in: np.ndarray | None, layer: str) -> list:
    """The compressed op's trailing bias inputs: b_in (rows as :func:`interleaved_gate_up`
    left them) and b_out, None where one is absent before the other."""
    node = m.root
    b_out = node.inputs[6] if len(node.inputs) > 6 else None
    out: list = []
    if b_in is not None:
        out.append(b.const(b_in, DType.float32, hint=f"{layer}.b_in"))
    elif b_out is not None:
        out.append(None)
    if b_out is not None:
        out.append(b_out)
    return out


@register("quantize-int8")
class QuantizeInt8(_QuantizeLinear):
    """Dynamic int8 linear layers: int8 weights per output channel, activations per token.

    Options:
        keep: ``|``-separated layer name patterns to leave in fp32.
        keep_trainable: leave trainable weights alone.
        head: convert the LM head too (default true).
    """

    rule_name = "int8-linear"

    def approximate_linear(
        self, x: np.ndarray, w: np.ndarray, hessian: np.ndarray | None = None
    ) -> np.ndarray:
        q, scale = quantize_int8(w)
        return int8_linear_reference(x, q, scale, None)

    def _replace(self, b: Builder, m: Match, bias: Value | None) -> Value:
        layer = self._record(b, m)
        q, scale = quantize_int8(np.asarray(m["w"].const))
        wq = b.const(q, DType.int8, hint=f"{layer}.weight_int8")
        ws = b.const(scale, DType.float32, hint=f"{layer}.weight_scale")
        return b.op("linear_int8", m["x"], wq, ws, bias)


@register("quantize-int4")
class QuantizeInt4(_QuantizeLinear):
    """Weight-only block-wise int4 linear layers (for memory-bound decoders).

    Options:
        block: input features per scale (a power of two >= 16; default 32; the int4
            pipeline asks for 128). A layer whose input features blocks of that size would
            pad further than blocks of 16 gets a smaller one (``layer_block``); each node's
            ``block_size`` says which.
        scales: ``mse`` (default: per block the least-squares scale of a few candidates)
            or ``absmax`` (``max|w| / 7``).
        compute: ``f32`` (default) or ``int8`` (activations rounded to int8 per block).
        calibration: ``gptq`` (default: GPTQ error feedback for every layer with a
            calibration Hessian in ``graph.meta["calibration"]``; without one,
            round-to-nearest) or ``off`` (round-to-nearest always).
        keep: ``|``-separated layer name patterns to leave in fp32.
        keep_trainable: leave trainable weights alone.
        head: convert the LM head too (default true; the int4 pipeline gives it int8).
    """

    rule_name = "int4-linear"

    def __init__(
        self,
        max_matches: int | None = None,
        keep: str = "",
        keep_trainable: bool = False,
        head: bool = True,
        block: int = 32,
        compute: str = "f32",
        scales: str = "mse",
        calibration: str = "gptq",
    ):
        block = check_block("quantize-int4", block)
        super().__init__(max_matches, keep, keep_trainable, head)
        self.block = block
        self.compute = check_compute("quantize-int4", str(compute))
        if str(scales) not in ("mse", "absmax"):
            raise PipelineError(f"quantize-int4: scales={scales}; want mse or absmax")
        self.search = str(scales) == "mse"
        if str(calibration) not in ("gptq", "off"):
            raise PipelineError(f"quantize-int4: calibration={calibration}; want gptq or off")
        self.calibration = str(calibration)
        self.rules = (*self.rules, experts_rule("int4-experts", self))

    def approximate_linear(
        self, x: np.ndarray, w: np.ndarray, hessian: np.ndarray | None = None
    ) -> np.ndarray:
        packed, scale = self._quantize(w, hessian)
        block = packed.shape[-1] * 2  # (N, blocks, block/2): the block the layer got
        return int4_linear_reference(x, packed, scale, None, block, w.shape[1], self.compute)

    def _quantize(self, w: np.ndarray, hessian: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        block = layer_block(self.block, w.shape[1])
        if hessian is None or self.calibration == "off":
            return quantize_int4(w, block, self.search)
        return quantize_int4_gptq(w, hessian, block, self.search)

    def _replace(self, b: Builder, m: Match, bias: Value | None) -> Value:
        w = m["w"]
        layer = self._record(b, m)
        meta = self._graph.meta if self._graph is not None else {}
        hessian = (meta.get(CALIBRATION) or {}).get(layer)
        packed, scale = self._quantize(np.asarray(w.const), hessian)
        if hessian is not None and self.calibration != "off":
            self.applied[-1]["calibrated"] = layer
        wq = b.const(packed, DType.uint8, hint=f"{layer}.weight_int4")
        ws = b.const(scale, DType.float32, hint=f"{layer}.weight_scale")
        return b.op(
            "linear_int4", m["x"], wq, ws, bias,
            block_size=packed.shape[-1] * 2, in_features=w.shape[1], compute=self.compute,
        )  # fmt: skip

    def _experts_block(self, m: Match) -> int:
        """The block both projections of the experts take: ORT's QMoE has one for fc1 and
        fc2, and wants the hidden and inner widths to be whole blocks."""
        hidden, inner = m["w_in"].shape[2], m["w_out"].shape[2]
        block = self.block
        while block > MIN_BLOCK and (hidden % block or inner % block):
            block //= 2
        return block

    def _experts_reason(self, m: Match) -> str | None:
        reason = experts_reason(self, m)
        if reason:
            return reason
        block = self._experts_block(m)
        hidden, inner = m["w_in"].shape[2], m["w_out"].shape[2]
        if hidden % block or inner % block:
            return f"hidden {hidden} and inner {inner} widths are not whole blocks of {block}"
        return None

    def _replace_experts(self, b: Builder, m: Match) -> Value:
        a = m.root.attrs
        layer = layer_name(m["w_in"])
        self.applied[-1]["layer"] = layer
        block = self._experts_block(m)
        w_in, b_in = interleaved_gate_up(m)
        inputs = [m["x"], m["index"], m["weights"]]
        for w, name in ((w_in, "w_in"), (np.asarray(m["w_out"].const, np.float32), "w_out")):
            packed = [quantize_int4(e, block, self.search) for e in w]
            inputs.append(b.const(np.stack([p for p, _ in packed]), DType.uint8,
                                  hint=f"{layer}.{name}_int4"))  # fmt: skip
            inputs.append(b.const(np.stack([s for _, s in packed]), DType.float32,
                                  hint=f"{layer}.{name}_scale"))  # fmt: skip
        inputs += expert_biases(b, m, b_in, layer)
        return b.op("moe_experts_int4", *inputs, block_size=block, activation=a["activation"],
                    gated=a["gated"], interleaved=a["gated"], compute=self.compute)  # fmt: skip

    def run(self, graph) -> PassResult:
        result = super().run(graph)
        result.stats["calibrated"] = [s["calibrated"] for s in self.applied if "calibrated" in s]
        return result
