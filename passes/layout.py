"""Layout changes: sink transposes until they cancel, and switch attention to the bsd layout.

Constant weights need no rule here: ``fold-constants`` folds ``permute(W)`` into a new
constant and ``fuse-linear`` turns ``matmul(x, W)`` / ``matmul(x, W.T)`` into ``linear``.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from tgraph.ir import Graph, Node, Value, simplify
from tgraph.ir.ops.shapes import norm_axes, norm_axis
from tgraph.passes.manager import PassResult, register
from tgraph.passes.rewrite import Builder, Match, P, RewritePass, Rule

UNARY = frozenset(
    "neg abs exp log sqrt rsqrt reciprocal tanh erf sigmoid relu silu sin cos floor gelu "
    "logical_not identity dropout cast clamp".split()
)
BINARY = frozenset(
    "add sub mul div floor_divide remainder pow maximum minimum "
    "eq ne lt le gt ge logical_and logical_or".split()
)
ELEMENTWISE = UNARY | BINARY | {"where"}
HEADS = (0, 2, 1, 3)  # (B, T, H, D) <-> (B, H, T, D)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _shared(v: Value) -> bool:
    """Whether ``v`` has a reader besides its one user (another node or the graph outputs)."""
    graph = v.producer.graph
    return len(v.uses()) != 1 or any(o is v for o in graph.outputs)


def _is_identity(perm: tuple[int, ...]) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


# -- operands that cross a permute ---------------------------------------------------------------
#
# op(permute(x, p), c) == permute(op(x, c'), p) with c' = permute(c padded to rank, inverse(p)).


def _padded(c: Value, rank: int) -> tuple:
    return (1,) * (rank - c.rank) + tuple(c.shape)


def _only_units_move(c: Value, perm: tuple[int, ...]) -> bool:
    """Whether c' is a reshape of c: its non-unit axes keep their order."""
    moved = [perm[j] for j, d in enumerate(_padded(c, len(perm))) if d != 1]
    return moved == sorted(moved)


def _carry_reason(c: Value | None, perm: tuple[int, ...], keep_trainable: bool) -> str | None:
    if c is None:
        return None
    if c.rank > len(perm):
        return f"operand %{c.name} has rank {c.rank} above the permuted rank {len(perm)}"
    if _only_units_move(c, perm):
        return None
    if c.const is None:
        return f"operand %{c.name} is not a constant and would need a transpose"
    if keep_trainable and c.trainable:
        return f"operand @{c.name} is a trainable parameter (keep_trainable=true)"
    return None


def _carry(b: Builder, c: Value | None, perm: tuple[int, ...]) -> Value | None:
    """The operand c' that goes with the un-permuted tensor (see the comment above)."""
    if c is None:
        return None
    inv = _inverse(perm)
    padded = _padded(c, len(perm))
    shape = [padded[i] for i in inv]
    while len(shape) > c.rank and shape[0] == 1:
        shape.pop(0)  # broadcasting restores leading unit dims
    shape = tuple(shape)
    if shape == tuple(c.shape) and _only_units_move(c, perm):
        return c
    if c.const is None:
        return b.op("reshape", c, shape=shape)
    moved = np.ascontiguousarray(np.transpose(c.const.reshape(padded), inv)).reshape(shape)
    return b.const(moved, c.dtype, hint=f"{c.name}+permuted")


# -- (a, b) permute(q) of transparent ops of permute(p) -> the ops, permute(p then q) ---------
#
# A permute sinks through ops that do not care about the order of the axes it moves
# (elementwise ops with constant operands, linear when the last axis stays, squeeze,
# unsqueeze, select, reshapes of unmoved trailing axes) until it meets the next permute:
# then the two compose into one permute, or into none when they cancel.

NO_TOP = "no permute above"  # a chain without a top permute is not a match, not a rejection
TRANSPARENT = ELEMENTWISE | {"linear", "squeeze", "unsqueeze", "gather", "reshape"}


def _walk(root: Node) -> tuple[Node | None, list[tuple[Node, int]], str | None]:
    """The top permute and the (node, chain operand) steps top-down from ``root``, or why not."""
    steps: list[tuple[Node, int]] = []
    v = root.inputs[0]
    while True:
        node = v.producer
        if node is not None and node.op == "permute" and steps:
            break
        if node is None or node.op not in TRANSPARENT:
            return None, [], NO_TOP
        live = [i for i, x in enumerate(node.inputs) if x is not None and x.const is None]
        if len(live) != 1 or (node.op not in ELEMENTWISE and live != [0]):
            return None, [], NO_TOP  # several tensors meet here: not one chain
        steps.append((node, live[0]))
        v = node.inputs[live[0]]
    for step, _ in steps[1:]:
        if _shared(step.output):
            return None, [], f"%{step.output.name} has other users"
    return node, steps[::-1], None


def _renumber(perm: list[int]) -> tuple[int, ...]:
    order = sorted(perm)
    return tuple(order.index(p) for p in perm)


def _suffix(perm: tuple[int, ...]) -> int:
    """Where the trailing axes that ``perm`` leaves in place begin."""
    k = len(perm)
    while k and perm[k - 1] == k - 1:
        k -= 1
    return k


def _through(node: Node, index: int, perm: tuple, keep: bool) -> tuple[tuple | None, str | None]:
    """The permutation after ``node`` when its input is permute(u, perm), or why it blocks."""
    if node.op in ELEMENTWISE:
        others = (c for i, c in enumerate(node.inputs) if i != index)
        return perm, next(filter(None, (_carry_reason(c, perm, keep) for c in others)), None)
    if node.op == "linear":
        ok = perm[-1] == len(perm) - 1
        return perm, None if ok else f"linear %{node.name} reads a permuted last axis"
    if node.op == "unsqueeze":
        axes = norm_axes(node.attrs["axes"], node.output.rank)
        moved = iter(p + len(axes) for p in perm)
        return tuple(
            axes.index(i) if i in axes else next(moved) for i in range(node.output.rank)
        ), None
    if node.op == "squeeze":
        axes = norm_axes(node.attrs["axes"], len(perm))
        return _renumber([p for i, p in enumerate(perm) if i not in axes]), None
    if node.op == "gather":
        if node.inputs[1].rank != 0:
            return None, f"gather %{node.name} has a non-scalar index"
        axis = norm_axis(node.attrs["axis"], len(perm))
        return _renumber([p for i, p in enumerate(perm) if i != axis]), None
    k, shape = _suffix(perm), node.attrs["shape"]  # reshape
    if tuple(shape[:k]) != tuple(node.inputs[0].shape[:k]):
        return None, f"reshape %{node.name} regroups permuted axes"
    return perm[:k] + tuple(range(k, len(shape))), None


def _emit(b: Builder, node: Node, index: int, cur: Value, perm: tuple) -> Value:
    """``node`` applied to the un-permuted ``cur`` (the inverse of :func:`_through`)."""
    ins, attrs = list(node.inputs), dict(node.attrs)
    if node.op in ELEMENTWISE:
        ins = [c if i == index else _carry(b, c, perm) for i, c in enumerate(ins)]
    elif node.op == "unsqueeze":
        attrs["axes"] = tuple(range(len(attrs["axes"])))
    elif node.op == "squeeze":
        attrs["axes"] = tuple(sorted(perm[a] for a in norm_axes(attrs["axes"], len(perm))))
    elif node.op == "gather":
        attrs["axis"] = perm[norm_axis(attrs["axis"], len(perm))]
    elif node.op == "reshape":
        k = _suffix(perm)
        attrs["shape"] = tuple(cur.shape[:k]) + tuple(attrs["shape"][k:])
    ins[index] = cur
    return b.op(node.op, *ins, **attrs)


Plan = tuple[Node, list[tuple[Node, int, tuple]], tuple]


def _plan(m: Match, keep: bool) -> tuple[Plan | None, str | None]:
    """(top permute, steps with the permutation each reads, the final one), or why not."""
    top, steps, reason = _walk(m.root)
    if reason:
        return None, reason
    perm, planned = top.attrs["perm"], []
    for node, index in steps:
        planned.append((node, index, perm))
        perm, reason = _through(node, index, perm, keep)
        if reason:
            return None, reason
    return (top, planned, perm), None


def _sink_check(m: Match, keep: bool) -> str | None:
    plan, reason = _plan(m, keep)
    if reason:
        return reason
    top, _, last = plan
    total = tuple(last[i] for i in m.root.attrs["perm"])
    if _shared(top.output) and not _is_identity(total):
        return f"%{top.name} has other users, so composing would not save a permute"
    return None


def _sink_replace(b: Builder, m: Match) -> Value:
    (top, planned, last), _ = _plan(m, keep=False)
    cur = top.inputs[0]
    for node, index, perm in planned:
        cur = _emit(b, node, index, cur, perm)
    total = tuple(last[i] for i in m.root.attrs["perm"])
    return cur if _is_identity(total) else b.op("permute", cur, perm=total)


def _sink_rules(keep_trainable: bool) -> tuple[Rule, ...]:
    # One pattern per arity of the last op before the permute; the check walks the rest.
    arities = {1: UNARY | {"squeeze", "unsqueeze", "reshape"}, 2: BINARY | {"linear", "gather"}}
    arities[3] = {"where", "linear"}
    return tuple(
        Rule(
            name="sink-permute",
            pattern=P.op("permute", P.op(tuple(sorted(ops)), *(P.var(f"a{i}") for i in range(n)))),
            check=partial(_sink_check, keep=keep_trainable),
            replace=_sink_replace,
            commutative=False,
        )
        for n, ops in arities.items()
    )


# -- (c) attention: bhsd with head transposes around it -> bsd ----------------------------------


def _switchable(attn: Node) -> bool:
    """A bhsd attention whose only reader is the (0, 2, 1, 3) transpose back to (B, T, H, D)."""
    if attn.op != "attention" or attn.attrs["layout"] != "bhsd" or _shared(attn.output):
        return False
    (user,) = attn.output.users()
    return user.op == "permute" and user.attrs["perm"] == HEADS


def _rotary_check(m: Match, keep_trainable: bool) -> str | None:
    perm = m["perm"].attrs["perm"]
    if perm[-1] != len(perm) - 1:
        return f"permute {perm} moves the last axis, which rotary rotates"
    out = m.root.output
    users, escapes = out.users(), any(o is out for o in m.root.graph.outputs)
    if escapes or not users or not all(map(_switchable, users)):
        return "rotary output is not read only by bhsd attentions that can switch to bsd"
    return _carry_reason(m["cos"], perm, keep_trainable) or _carry_reason(
        m["sin"], perm, keep_trainable
    )


def _rotary_replace(b: Builder, m: Match) -> Value:
    perm = m["perm"].attrs["perm"]
    cos, sin = _carry(b, m["cos"], perm), _carry(b, m["sin"], perm)
    rot = b.op("rotary", m["x"], cos, sin, interleaved=m.root.attrs["interleaved"])
    return b.op("permute", rot, perm=perm)


def _bsd(b: Builder, x4: Value) -> Value:
    """(B, T, H, D) -> (B, T, H*D), reusing the tensor the heads were split from if any."""
    batch, seq, heads, dim = x4.shape
    want = (batch, seq, simplify(heads * dim))
    src = x4.producer
    if src is not None and src.op == "reshape" and tuple(src.inputs[0].shape) == want:
        return src.inputs[0]
    return b.op("reshape", x4, shape=want)


def _attention_replace(b: Builder, m: Match) -> Value:
    attn = m["attn"]
    mask = [m["mask"]] if "mask" in m else []
    attrs = {**attn.attrs, "layout": "bsd"}
    out = b.op("attention", _bsd(b, m["q"]), _bsd(b, m["k"]), _bsd(b, m["v"]), *mask, **attrs)
    return b.op("reshape", out, shape=m.root.output.shape)


def _attention_rules() -> tuple[Rule, ...]:
    heads = [P.op("permute", P.var(x), perm=HEADS) for x in "qkv"]
    return tuple(
        Rule(
            name="attention-bsd",
            pattern=P.op(
                "permute",
                P.op("attention", *heads, *extra, name="attn", layout="bhsd"),
                perm=HEADS,
            ),
            replace=_attention_replace,
            commutative=False,
        )
        for extra in ((), (P.var("mask"),))
    )


@register("layout")
class Layout(RewritePass):
    """Sink transposes through elementwise/shape ops until they cancel; attention to bsd.

    Options:
        keep_trainable: never turn a trainable parameter into a new transposed constant.
    """

    def __init__(self, max_matches: int | None = None, keep_trainable: bool = False):
        super().__init__(max_matches)
        rotary = Rule(
            name="rotary-hoist-permute",
            pattern=P.op(
                "rotary", P.op("permute", P.var("x"), name="perm"), P.var("cos"), P.var("sin")
            ),
            check=partial(_rotary_check, keep_trainable=keep_trainable),
            replace=_rotary_replace,
            commutative=False,
        )
        self.rules = (
            *_sink_rules(keep_trainable),
            rotary,
            *_attention_rules(),
        )

    def run(self, graph: Graph) -> PassResult:
        result = super().run(graph)
        rejected = result.stats["rejected"]
        result.stats["rejected"] = [r for r in rejected if r["reason"] != NO_TOP]
        return result
