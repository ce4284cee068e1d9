"""Rewrite ``nn.MultiheadAttention``'s sequence-first head shuffles into batch-first ones.

``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer`` with ``batch_first=True``)
works sequence-first inside: its packed projection ``L`` (B, T, 3E) is reshaped to
(B, T, 3, E), moved to (3, T, B, E) and split with ``select``; each of q, k, v is then
viewed as (T, B*H, D), transposed to (B*H, T, D) and viewed as (B, H, T, D). Element for
element that is the usual head split of a slice of ``L``::

    reshape(permute(reshape(select(qkv, i), (T, B*H, D)), (1, 0, 2)), (B, H, T, D))
      = permute(reshape(slice(L, -1, i*E, (i+1)*E), (B, T, H, D)), (0, 2, 1, 3))

and on the way out, ``linear`` maps rows alike, so the transposes around it move inside::

    permute(linear(reshape(permute(A, (2, 0, 1, 3)), (T, B, E)), W, b), (1, 0, 2))
      = linear(reshape(permute(A, (0, 2, 1, 3)), (B, T, E)), W, b)

After this, ``layout`` switches the attention to the bsd layout that ONNX Runtime's
MultiHeadAttention takes, and no transpose of activations is left in the block.
"""

from __future__ import annotations

from tgraph.ir import Node, Value, simplify
from tgraph.passes.manager import register
from tgraph.passes.rewrite import Builder, Match, P, RewritePass, Rule


def _producer(v: Value, op: str, **attrs) -> Node | None:
    node = v.producer
    if node is None or node.op != op:
        return None
    if any(node.attrs.get(k) != want for k, want in attrs.items()):
        return None
    return node


def _packed(sq: Value) -> tuple[Value | None, object, str | None]:
    """(L, E, None) for MultiheadAttention's packed shuffle, else (None, None, reason)."""
    squeeze = _producer(sq, "squeeze", axes=(3,))
    perm = squeeze and _producer(squeeze.inputs[0], "permute", perm=(3, 2, 1, 0, 4))
    unsq = perm and _producer(perm.inputs[0], "unsqueeze", axes=(0,))
    split = unsq and _producer(unsq.inputs[0], "reshape")
    if split is None:
        return None, None, "selected tensor is not MultiheadAttention's packed q/k/v shuffle"
    packed = split.inputs[0]
    shape = tuple(split.outputs[0].shape)
    if packed.rank != 3 or len(shape) != 4 or shape[2] != 3:
        return None, None, f"packed projection reshaped to {shape}, want (B, T, 3, E)"
    if simplify(shape[3] * 3 - packed.shape[2]) != 0:
        return None, None, "packed projection is not 3 x E wide"
    return packed, shape[3], None


def _heads_check(m: Match) -> str | None:
    packed, e, reason = _packed(m["sq"])
    if reason:
        return reason
    index = m["idx"].const
    if index is None or index.size != 1 or int(index) not in (0, 1, 2):
        return "select index is not 0, 1 or 2"
    b, t, _ = packed.shape
    seq_view = tuple(m["view"].output.shape)  # (T, B*H, D)
    out = tuple(m.root.output.shape)  # (B, H, T, D)
    if len(out) != 4 or len(seq_view) != 3:
        return f"head views {seq_view} -> {out}, want (T, B*H, D) -> (B, H, T, D)"
    h, d = out[1], out[3]
    if simplify(h * d - e) != 0:
        return f"heads {h} x {d} do not cover the {e} features of one projection"
    if simplify(out[0] - b) != 0 or simplify(out[2] - t) != 0:
        return "heads view does not keep batch and sequence"
    if simplify(seq_view[1] - b * h) != 0 or simplify(seq_view[0] - t) != 0:
        return "sequence-first view does not group batch-major heads"
    return None


def _heads_replace(b: Builder, m: Match) -> Value:
    packed, e, _ = _packed(m["sq"])
    i = int(m["idx"].const)
    bsz, t, _ = packed.shape
    _, h, _, d = m.root.output.shape
    part = b.op("slice", packed, axis=2, start=i * e, end=(i + 1) * e, step=1)
    split = b.op("reshape", part, shape=(bsz, t, h, d))
    return b.op("permute", split, perm=(0, 2, 1, 3))


HEADS = Rule(
    name="mha-heads",
    pattern=P.op(
        "reshape",
        P.op(
            "permute",
            P.op("reshape", P.op("gather", P.var("sq"), P.const("idx"), axis=0), name="view"),
            perm=(1, 0, 2),
        ),
    ),
    check=_heads_check,
    replace=_heads_replace,
)


def _out_check(m: Match) -> str | None:
    a = m["a"]
    if a.rank != 4:
        return f"attention output has rank {a.rank}, want 4"
    bsz, h, t, d = a.shape
    want = (t, bsz, h * d)
    got = tuple(m["merge"].output.shape)
    if len(got) != 3 or any(simplify(x - y) != 0 for x, y in zip(got, want)):
        return f"merged heads {got}, want (T, B, H*D)"
    return None


def _out_replace(b: Builder, m: Match, with_bias: bool) -> Value:
    a = m["a"]
    bsz, h, t, d = a.shape
    x = b.op("reshape", b.op("permute", a, perm=(0, 2, 1, 3)), shape=(bsz, t, h * d))
    return b.op("linear", x, m["w"], m["b"]) if with_bias else b.op("linear", x, m["w"])


def _out_rule(with_bias: bool) -> Rule:
    weights = (P.var("w"), P.var("b")) if with_bias else (P.var("w"),)
    merge = P.op("reshape", P.op("permute", P.var("a"), perm=(2, 0, 1, 3)), name="merge")
    return Rule(
        name="mha-out-proj",
        pattern=P.op("permute", P.op("linear", merge, *weights), perm=(1, 0, 2)),
        check=_out_check,
        replace=lambda b, m: _out_replace(b, m, with_bias),
    )


@register("canonicalize-mha")
class CanonicalizeMHA(RewritePass):
    """Turn nn.MultiheadAttention's sequence-first head shuffles into batch-first head splits."""

    def __init__(self, max_matches: int | None = None):
        super().__init__(max_matches)
        self.rules = (HEADS, _out_rule(True), _out_rule(False))
