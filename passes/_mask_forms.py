"""The causal-mask proof of fuse-attention: which entries of a mask value are kept.

A causal mask is proven from the IR alone (:func:`tri_form`): constants are inspected, and
``full`` / ``tril`` / ``triu`` / top-left ``slice`` / ``eq 0`` / ``logical_not`` / ``where`` /
``cast`` / reshapes that keep the last two dims are followed symbolically, and so are
comparisons of position indices (``kv_idx <= q_idx`` on ``arange`` through ``unsqueeze`` /
``expand`` / ``+ int``, as Hugging Face's masking_utils builds them) and their ``logical_and``.
Anything else stays a general mask input, which is always correct (just slower).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tgraph.ir import DType, IRError, Node, Value
from tgraph.ir.ops.shapes import broadcast_shapes

KIND_LOWER, KIND_UPPER, KIND_ALL, KIND_NONE = "lower", "upper", "all", "none"


@dataclass(frozen=True)
class Tri:
    """Where a tensor is nonzero, over (row i, column j) of its last two dims.

    ``lower``: j - i <= d (``tril``); ``upper``: j - i >= d (``triu``); ``all`` / ``none``:
    everywhere / nowhere, in every dim. The same in every leading index. ``fill`` is the
    value of the nonzero entries when it is one known number.
    """

    kind: str
    d: int = 0
    fill: float | None = None

    def negate(self) -> Tri:
        flip = {KIND_ALL: KIND_NONE, KIND_NONE: KIND_ALL}
        if self.kind in flip:
            return Tri(flip[self.kind], fill=1.0)
        if self.kind == KIND_LOWER:  # not (j - i <= d)  <=>  j - i >= d + 1
            return Tri(KIND_UPPER, self.d + 1, 1.0)
        return Tri(KIND_LOWER, self.d - 1, 1.0)

    @property
    def matrix(self) -> bool:
        return self.kind in (KIND_LOWER, KIND_UPPER)


CAUSAL_KEEP = (KIND_LOWER, 0)  # tril(ones(Tq, Tk)): query i sees keys j <= i
CAUSAL_DROP = (KIND_UPPER, 1)  # triu(ones(Tq, Tk), 1): the keys a causal query must not see


def _const_form(a: np.ndarray) -> Tri | None:
    nz = a != 0
    values = np.unique(a[nz]) if nz.any() else np.zeros(0)
    fill = float(values[0]) if len(values) == 1 else None
    if nz.all():
        return Tri(KIND_ALL, fill=fill)
    if not nz.any():
        return Tri(KIND_NONE)
    if a.ndim < 2:
        return None
    rows, cols = a.shape[-2:]
    mats = nz.reshape(-1, rows, cols)
    if not (mats == mats[0]).all():
        return None
    m = mats[0]
    ones = np.ones((rows, cols), dtype=bool)
    d_lower = int(m[-1].sum()) - rows  # the last row of tril(.., d) holds rows + d ones
    if np.array_equal(m, np.tril(ones, d_lower)):
        return Tri(KIND_LOWER, d_lower, fill)
    d_upper = cols - int(m[0].sum())  # the first row of triu(.., d) holds cols - d ones
    if np.array_equal(m, np.triu(ones, d_upper)):
        return Tri(KIND_UPPER, d_upper, fill)
    return None


def _keeps_matrix(src: Value, out: Value, form: Tri) -> bool:
    """Whether ``out`` has the same (i, j) matrix as ``src`` (or the form needs none)."""
    if not form.matrix:
        return True
    return src.rank >= 2 and out.rank >= 2 and tuple(src.shape[-2:]) == tuple(out.shape[-2:])


def _is_zero(v: Value) -> bool:
    return v.const is not None and v.const.size == 1 and float(np.asarray(v.const).flat[0]) == 0


def _cast_keeps_truth(src: DType, dst: DType) -> bool:
    # float -> int would turn 0.5 into 0; everything else keeps zero / nonzero apart.
    return dst is DType.bool or src is DType.bool or dst.is_float or (src.is_int and dst.is_int)


def _shift(form: Tri, rows: int = 0, cols: int = 0) -> Tri:
    # out[i, j] = in[i + rows, j + cols]: j - i <= d  becomes  j - i <= d + rows - cols.
    return replace(form, d=form.d + rows - cols) if form.matrix else form


def tri_form(v: Value, depth: int = 0) -> Tri | None:
    """The :class:`Tri` form of ``v``, or None when it cannot be proven."""
    if v.const is not None:
        return _const_form(np.asarray(v.const))
    node = v.producer
    if node is None or depth > 16:
        return None
    op, a = node.op, node.attrs
    ins = node.inputs
    if op == "full":
        return Tri(KIND_ALL, fill=float(a["value"])) if a["value"] else Tri(KIND_NONE)
    if op in ("identity", "dropout", "unsqueeze", "reshape", "expand"):
        form = tri_form(ins[0], depth + 1)
        if form is None or not _keeps_matrix(ins[0], v, form):
            return None
        if op == "unsqueeze" and form.matrix and max(x % v.rank for x in a["axes"]) >= v.rank - 2:
            return None
        return form
    if op == "cast":
        ok = _cast_keeps_truth(ins[0].dtype, a["dtype"])
        form = tri_form(ins[0], depth + 1) if ok else None
        return replace(form, fill=None if a["dtype"] is DType.bool else form.fill) if form else None
    if op == "logical_not":
        form = tri_form(ins[0], depth + 1)
        return form.negate() if form else None
    if op in ("eq", "ne") and any(_is_zero(x) for x in ins):
        other = ins[1] if _is_zero(ins[0]) else ins[0]
        form = tri_form(other, depth + 1)
        if form is None or not _keeps_matrix(other, v, form):
            return None
        return form.negate() if op == "eq" else replace(form, fill=1.0)
    if op in ("tril", "triu"):
        return _tri_op(op, a["diagonal"], tri_form(ins[0], depth + 1))
    if op == "slice":
        return _slice_form(node, tri_form(ins[0], depth + 1))
    if op == "where":
        return _where_form(node, [tri_form(x, depth + 1) for x in ins])
    if op in COMPARE_SWAP:
        return _compare_form(node)
    if op == "logical_and":
        return _and_form(node, [tri_form(x, depth + 1) for x in ins])
    return None


# -- masks built from position indices (Hugging Face's masking_utils) ------------------------
#
# kv_idx <= q_idx with kv_idx = arange(Tk)[None, None, None, :] and q_idx = arange(Tq)[..., None]
# (plus integer offsets): j + a <= i + b  <=>  j - i <= b - a, a tril with d = b - a.

COMPARE_SWAP = {"le": "ge", "lt": "gt", "ge": "le", "gt": "lt"}


def index_form(v: Value, depth: int = 0) -> tuple[int, int] | None:
    """``(axis, offset)`` when ``v`` holds ``p + offset`` at position p of ``axis`` (counted
    from the end) and is constant along every other axis, e.g. ``arange(T)[:, None] + 2`` ->
    ``(-2, 2)``; None when that cannot be proven."""
    node = v.producer
    if node is None or depth > 16 or not v.dtype.is_int:
        return None
    op, a, ins = node.op, node.attrs, node.inputs
    if op == "arange":
        return (-1, a["start"]) if a["step"] == 1 and isinstance(a["start"], int) else None
    if op in ("add", "sub") and _int_scalar(ins[1]) is not None:
        form = index_form(ins[0], depth + 1)
        step = _int_scalar(ins[1]) * (1 if op == "add" else -1)
        same = tuple(v.shape) == tuple(ins[0].shape)
        return (form[0], form[1] + step) if form and same else None
    if op == "add" and _int_scalar(ins[0]) is not None:
        form = index_form(ins[1], depth + 1)
        same = tuple(v.shape) == tuple(ins[1].shape)
        return (form[0], form[1] + _int_scalar(ins[0])) if form and same else None
    form = index_form(ins[0], depth + 1) if ins else None
    if form is None:
        return None
    if op in ("identity", "expand"):  # expand adds or broadcasts dims other than the axis
        return form if v.shape[form[0]] == ins[0].shape[form[0]] else None
    if op == "unsqueeze":
        added = {x % v.rank for x in a["axes"]}
        kept = [i for i in range(v.rank) if i not in added]  # where the input's dims went
        return (kept[ins[0].rank + form[0]] - v.rank, form[1])
    return None


def _int_scalar(v: Value) -> int | None:
    if v.const is None or v.const.size != 1 or not v.dtype.is_int:
        return None
    return int(np.asarray(v.const).flat[0])


def _compare_form(node: Node) -> Tri | None:
    forms = [index_form(x) for x in node.inputs]
    out, op, (a, b) = node.output, node.op, node.inputs
    if None in forms or out.rank < 2:
        return None
    (a_axis, col), (b_axis, row) = forms
    if (a_axis, b_axis) == (-2, -1):  # i (op) j  <=>  j (swapped op) i
        a_axis, b_axis, col, row, a, b = b_axis, a_axis, row, col, b, a
        op = COMPARE_SWAP[op]
    if (a_axis, b_axis) != (-1, -2):
        return None
    if a.shape[-1] != out.shape[-1] or b.rank < 2 or b.shape[-2] != out.shape[-2]:
        return None  # an index of length 1 broadcast over the matrix is not i or j
    d = row - col  # j + col (op) i + row  <=>  j - i (op) d
    return {
        "le": Tri(KIND_LOWER, d, 1.0),
        "lt": Tri(KIND_LOWER, d - 1, 1.0),
        "ge": Tri(KIND_UPPER, d, 1.0),
        "gt": Tri(KIND_UPPER, d + 1, 1.0),
    }[op]


def _and_form(node: Node, forms: list[Tri | None]) -> Tri | None:
    if None in forms:
        return None
    for x, y, src in ((forms[0], forms[1], node.inputs[1]), (forms[1], forms[0], node.inputs[0])):
        if x.kind == KIND_NONE:
            return Tri(KIND_NONE)
        if x.kind == KIND_ALL:
            return replace(y, fill=1.0) if _keeps_matrix(src, node.output, y) else None
    if not all(_keeps_matrix(x, node.output, f) for x, f in zip(node.inputs, forms)):
        return None
    kinds = {f.kind for f in forms}
    if kinds == {KIND_LOWER}:
        return Tri(KIND_LOWER, min(f.d for f in forms), 1.0)
    if kinds == {KIND_UPPER}:
        return Tri(KIND_UPPER, max(f.d for f in forms), 1.0)
    return None  # a band (sliding window): no Tri form


def _tri_op(op: str, diagonal: int, form: Tri | None) -> Tri | None:
    if form is None or form.kind == KIND_NONE:
        return form
    if form.kind == KIND_ALL:
        return Tri(KIND_LOWER if op == "tril" else KIND_UPPER, diagonal, form.fill)
    if op == "tril" and form.kind == KIND_LOWER:
        return replace(form, d=min(form.d, diagonal))
    if op == "triu" and form.kind == KIND_UPPER:
        return replace(form, d=max(form.d, diagonal))
    return None


def _slice_form(node, form: Tri | None) -> Tri | None:
    if form is None or not form.matrix:
        return form
    x, a = node.inputs[0], node.attrs
    axis = a["axis"] % x.rank
    if axis < x.rank - 2:
        return form
    if a["step"] != 1 or not isinstance(a["start"], int):
        return None
    return _shift(form, rows=a["start"]) if axis == x.rank - 2 else _shift(form, cols=a["start"])


def _where_form(node, forms: list[Tri | None]) -> Tri | None:
    cond, x, y = forms
    if (
        cond is None
        or x is None
        or y is None
        or not _keeps_matrix(node.inputs[0], node.output, cond)
    ):
        return None
    if x.kind == KIND_ALL and y.kind == KIND_NONE:
        return replace(cond, fill=x.fill)
    if x.kind == KIND_NONE and y.kind == KIND_ALL:
        return replace(cond.negate(), fill=y.fill)
    return None


def is_causal(v: Value, scores_shape: Sequence, want: tuple[str, int]) -> bool:
    """Whether ``v`` is nonzero exactly where ``want`` says, over the scores' (Tq, Tk)."""
    form = tri_form(v)
    if form is None or (form.kind, form.d) != want:
        return False
    return v.rank >= 2 and tuple(v.shape[-2:]) == tuple(scores_shape[-2:])


def fill_kind(fill: float, dtype: DType) -> str | None:
    """'inf' for -inf, 'min' for a finite fill at most half the dtype's minimum, else None.

    Adding a 'min' fill to a score s gives exactly the fill while |s| < 2**100, and a masked
    entry's exp() is 0 whenever its row holds one unmasked score, as a causal row always does.
    """
    if fill == -math.inf:
        return "inf"
    if dtype.is_float and fill <= float(np.finfo(dtype.numpy).min) / 2:
        return "min"
    return None


def broadcasts_into(shape: Sequence, target: Sequence) -> bool:
    try:
        return len(shape) <= len(target) and broadcast_shapes(shape, target) == tuple(target)
    except IRError:  # the shapes do not broadcast
        return False
