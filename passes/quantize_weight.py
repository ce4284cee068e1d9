"""Weight-only int8 for decoders: linear layers, the LM head and (optionally) embeddings.

``quantize-int8-weight`` turns ``linear(x, W, b)`` with a constant fp32 ``W`` into
``linear_int8w(x, Wq, w_scale, b)`` (symmetric int8 per output channel, fp32 activations
or, with ``compute=int8``, activations rounded to int8 per block; ``tgraph/ir/ops/quant.py``)
and, with ``embedding=int8``, an embedding lookup ``gather(T, ids, axis=0)`` in a constant
fp32 table into ``embedding_int8(Tq, row_scale, ids)`` (one scale per row) or, with
``embedding=int4``, ``embedding_int4(codes, scales, ids)`` (blocks of 32 features).

Decode reads every weight once per token, so bytes of weights set its speed: int8 weights
read a quarter of fp32's. In the ``int4`` pipeline this pass runs after ``quantize-int4
{head=false}`` and gives the LM head (the layer whose output is the logits) int8 weights:
4 bits on the head cost more accuracy than on any other layer (docs/compression.md).
``stats["head"]`` names the LM head(s) converted and ``stats["embedding"]`` the tables, so
the dump and ``tgraph dump --why-not-fused`` show the choice.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from tgraph.ir import DType, Value
from tgraph.ir.ops.quant import int8w_linear_reference
from tgraph.passes.manager import PassResult, PipelineError, register
from tgraph.passes.rewrite import Builder, Match, P, Rule

from .quantize import (
    _QuantizeLinear,
    check_block,
    check_compute,
    expert_biases,
    experts_reason,
    experts_rule,
    interleaved_gate_up,
    layer_block,
    layer_name,
    quantize_int4,
    quantize_int8,
)  # fmt: skip

EMBEDDING = ("fp32", "int8", "int4")
EMBEDDING_INT4_BLOCK = 32  # features per scale of an int4 table (a lookup reads one row)


@register("quantize-int8-weight")
class QuantizeInt8Weight(_QuantizeLinear):
    """Weight-only int8 linear layers (per-channel) and, with embedding=int8, embeddings.

    Options:
        embedding: ``int8`` (default), ``int4`` (blocks of 32 features, one scale each)
            or ``fp32``: the embedding tables' precision.
        compute: ``f32`` (default) or ``int8`` (activations rounded to int8 per block).
        block: the activation block of ``compute=int8`` (a power of two >= 16; default 128).
        keep: ``|``-separated layer name patterns to leave in fp32.
        keep_trainable: leave trainable weights alone.
        head: convert the LM head too (default true).
    """

    rule_name = "int8w-linear"

    def __init__(
        self,
        max_matches: int | None = None,
        keep: str = "",
        keep_trainable: bool = False,
        head: bool = True,
        embedding: str = "int8",
        compute: str = "f32",
        block: int = 128,
    ):
        super().__init__(max_matches, keep, keep_trainable, head)
        if str(embedding) not in EMBEDDING:
            raise PipelineError(
                f"quantize-int8-weight: embedding={embedding}; want one of {', '.join(EMBEDDING)}"
            )
        block = check_block("quantize-int8-weight", block)
        self.embedding = str(embedding)
        self.compute = check_compute("quantize-int8-weight", str(compute))
        self.block = block
        self.rules = (*self.rules, experts_rule("int8w-experts", self))
        if self.embedding != "fp32":
            self.rules = (
                *self.rules,
                Rule(
                    name=f"{self.embedding}-embedding",
                    pattern=P.op("gather", P.const("table"), P.var("ids"), axis=0),
                    check=self._table_reason,
                    replace=self._replace_table,
                ),
            )

    def approximate_linear(
        self, x: np.ndarray, w: np.ndarray, hessian: np.ndarray | None = None
    ) -> np.ndarray:
        q, scale = quantize_int8(w)
        return int8w_linear_reference(x, q, scale, None, self.compute, self.block)

    def _replace(self, b: Builder, m: Match, bias: Value | None) -> Value:
        layer = self._record(b, m)
        q, scale = quantize_int8(np.asarray(m["w"].const))
        wq = b.const(q, DType.int8, hint=f"{layer}.weight_int8")
        ws = b.const(scale, DType.float32, hint=f"{layer}.weight_scale")
        return b.op(
            "linear_int8w", m["x"], wq, ws, bias, compute=self.compute, block_size=self.block
        )

    def _experts_reason(self, m: Match) -> str | None:
        return experts_reason(self, m)

    def _replace_experts(self, b: Builder, m: Match) -> Value:
        """moe_experts -> moe_experts_int8: each expert row's int8 codes and scale, gate and
        up rows interleaved (ORT's QMoE layout, as the int4 pass does)."""
        a = m.root.attrs
        layer = layer_name(m["w_in"])
        self.applied[-1]["layer"] = layer
        w_in, b_in = interleaved_gate_up(m)
        inputs = [m["x"], m["index"], m["weights"]]
        for w, name in ((w_in, "w_in"), (np.asarray(m["w_out"].const, np.float32), "w_out")):
            codes = [quantize_int8(e) for e in w]  # per row of each expert
            inputs.append(b.const(np.stack([q for q, _ in codes]), DType.int8,
                                  hint=f"{layer}.{name}_int8"))  # fmt: skip
            inputs.append(b.const(np.stack([s for _, s in codes]), DType.float32,
                                  hint=f"{layer}.{name}_scale"))  # fmt: skip
        inputs += expert_biases(b, m, b_in, layer)
        return b.op("moe_experts_int8", *inputs, activation=a["activation"], gated=a["gated"],
                    interleaved=a["gated"])  # fmt: skip

    def _table_reason(self, m: Match) -> str | None:
        table = m["table"]
        name = layer_name(table)
        if table.dtype != DType.float32 or table.rank != 2:
            return f"table @{table.name} is {table.dtype} of rank {table.rank}, want f32 (V, C)"
        if not m["ids"].dtype.is_int:
            return f"ids %{m['ids'].name} are {m['ids'].dtype}, not integers"
        if self.keep_trainable and table.trainable:
            return f"table @{table.name} is a trainable parameter (keep_trainable)"
        if any(fnmatch.fnmatchcase(name, p) for p in self.keep):
            return f"embedding {name} kept in full precision (keep option / accuracy budget)"
        return None

    def _replace_table(self, b: Builder, m: Match) -> Value:
        name = layer_name(m["table"])
        self.applied[-1]["embedding"] = name
        table = np.asarray(m["table"].const)
        ids = m["ids"]
        if ids.dtype not in (DType.int64, DType.int32):
            ids = b.op("cast", ids, dtype=DType.int64)
        if self.embedding == "int4":
            block = layer_block(EMBEDDING_INT4_BLOCK, table.shape[1])
            codes, scales = quantize_int4(table, block, search=True)
            tq = b.const(codes, DType.uint8, hint=f"{name}.weight_int4")
            ts = b.const(scales, DType.float32, hint=f"{name}.weight_scale")
            return b.op("embedding_int4", tq, ts, ids, dim=table.shape[1])
        q, scale = quantize_int8(table)  # one scale per row (token)
        tq = b.const(q, DType.int8, hint=f"{name}.weight_int8")
        ts = b.const(scale, DType.float32, hint=f"{name}.row_scale")
        return b.op("embedding_int8", tq, ts, ids)

    def run(self, graph) -> PassResult:
        result = super().run(graph)
        result.stats["embedding"] = [s["embedding"] for s in self.applied if "embedding" in s]
        return result
