"""Complex tensors, which the IR has no dtype for, carried as pairs of real values.

A complex FX value translates to :class:`Complex`, its real and imaginary parts as two real
IR values of the complex tensor's shape. Sources: ``polar`` (complex rotary tables: Llama 4,
DeepSeek-V2), ``view_as_complex`` and the DFTs ``fft_fft`` / ``fft_fftn`` of real inputs
(FNet). Layout ops and sum, mean, neg translate each part with their own translator;
``mul``, ``add`` and ``sub`` follow complex arithmetic; ``view_as_real`` ends the pair as a
real (..., 2) tensor.
Any other op on a complex value, and a complex graph output, is refused naming the op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tgraph.frontend.aten.base import TRANSLATORS, aten, binary, norm_dim
from tgraph.frontend.convert import UnsupportedError
from tgraph.ir import DType, Value


@dataclass(frozen=True)
class Complex:
    """A complex tensor: ``re + i * im``, both real IR values of the tensor's shape."""

    re: Value
    im: Value


# Ops that move or copy elements, and the real-linear ones (sum, mean, neg): each part goes
# through the op's own translator, which reads the complex shape and real dtype from the meta.
PARTWISE = frozenset(
    f"aten::{name}"
    for name in (
        "slice.Tensor", "select.int", "unsqueeze.default", "squeeze.dim", "squeeze.dims",
        "view.default", "reshape.default", "_unsafe_view.default", "expand.default",
        "permute.default", "transpose.int", "clone.default", "contiguous.default",
        "alias.default", "_to_copy.default", "_assert_tensor_metadata.default",
        "sum.dim_IntList", "sum.default", "mean.dim", "neg.default",
    )
)  # fmt: skip

_COMPLEX_OPS: dict[str, Any] = {}


def is_complex_node(ctx, node: torch.fx.Node) -> bool:
    """Whether any tensor argument of ``node`` is a complex value."""
    nodes: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), nodes.append)
    return any(isinstance(ctx.env.get(a), Complex) for a in nodes)


def translate_complex(ctx, key: str, node: torch.fx.Node) -> Any:
    """Translate ``node``, which reads a complex value (see the module docstring)."""
    if key in _COMPLEX_OPS:
        return _COMPLEX_OPS[key](ctx, *node.args, **node.kwargs)
    if key not in PARTWISE:
        raise UnsupportedError(
            f"ATen op {key} on a complex tensor: tgraph carries complex values through "
            "layout ops, sum, mean, neg, mul, add, sub and view_as_real only"
        )
    parts = []
    for part in ("re", "im"):
        pick = lambda a, p=part: _part(ctx, a, p)  # noqa: E731
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), pick)
        parts.append(TRANSLATORS[key](ctx, *args, **kwargs))
    if not isinstance(node.meta.get("val"), torch.Tensor):  # an assert: nothing to check
        return Complex(*parts)
    want = ctx.meta_type()
    for v in parts:
        if not isinstance(v, Value) or v.type != want:
            raise UnsupportedError(f"complex {key}: a part translates to {v}, want {want}")
    return Complex(*parts)


def _part(ctx, arg: torch.fx.Node, part: str) -> Any:
    value = ctx.env.get(arg)
    return getattr(value, part) if isinstance(value, Complex) else arg


def _complex_op(*names: str):
    def deco(fn):
        for name in names:
            _COMPLEX_OPS[f"aten::{name}"] = fn
        return fn

    return deco


def _pair(ctx, v: Any) -> tuple[Any, Any]:
    """(real, imaginary) of an operand; None stands for a zero imaginary part."""
    v = ctx.value(v)
    if isinstance(v, Complex):
        return v.re, v.im
    if isinstance(v, complex):
        raise UnsupportedError("a complex Python scalar operand")
    return v, None


def _plus(ctx, a: Any, b: Any, op: str = "add") -> Any:
    if b is None:
        return a
    if a is None:
        return ctx.emit("neg", [b]) if op == "sub" else b
    return binary(ctx, op, a, b)


@_complex_op("mul.Tensor", "mul.Scalar")
def _mul(ctx, a, b):
    # (ar + i ai)(br + i bi) = (ar br - ai bi) + i (ar bi + ai br)
    (ar, ai), (br, bi) = _pair(ctx, a), _pair(ctx, b)
    times = lambda x, y: None if x is None or y is None else binary(ctx, "mul", x, y)  # noqa: E731
    re = _plus(ctx, times(ar, br), times(ai, bi), "sub")
    return Complex(re, _plus(ctx, times(ar, bi), times(ai, br)))


@_complex_op("add.Tensor", "sub.Tensor")
def _add_sub(ctx, a, b, alpha=1):
    if alpha != 1:
        raise UnsupportedError(f"complex add/sub with alpha={alpha}")
    op = "sub" if "sub" in str(ctx.node.target) else "add"
    (ar, ai), (br, bi) = _pair(ctx, a), _pair(ctx, b)
    return Complex(_plus(ctx, ar, br, op), _plus(ctx, ai, bi, op))


@_complex_op("view_as_real.default")
def _view_as_real(ctx, c):
    c = ctx.value(c)
    parts = [ctx.emit("unsqueeze", [p], axes=(p.rank,)) for p in (c.re, c.im)]
    return ctx.emit("concat", parts, axis=c.re.rank)


@aten("view_as_complex.default")
def _view_as_complex(ctx, x):
    x = ctx.value(x)
    take = lambda i: ctx.emit("gather", [x, ctx.const(i, DType.int64)], axis=x.rank - 1)  # noqa: E731
    return Complex(take(0), take(1))


@aten("polar.default")
def _polar(ctx, magnitude, angle):
    # abs * (cos(angle) + i sin(angle))
    magnitude, angle = ctx.value(magnitude), ctx.value(angle)
    re = ctx.emit("mul", [magnitude, ctx.emit("cos", [angle])])
    return Complex(re, ctx.emit("mul", [magnitude, ctx.emit("sin", [angle])]))


@aten("fft_fft.default", "fft_fftn.default")
@_complex_op("fft_fft.default", "fft_fftn.default")
def _fft(ctx, x, *args, **kwargs):
    # fft(x, n, dim, norm) / fftn(x, s, dim, norm): a DFT along each dim, as matmuls with the
    # (N, N) matrix exp(-2 pi i jk / N) = C - i S.
    name = "fftn" if "fftn" in str(ctx.node.target) else "fft"
    names = ("s", "dim", "norm") if name == "fftn" else ("n", "dim", "norm")
    given = dict(zip(names, args), **kwargs)
    if given.get("s", given.get("n")) is not None or given.get("norm") not in (None, "backward"):
        raise UnsupportedError(f"fft_{name} with a size or norm argument (only the defaults)")
    re, im = _pair(ctx, x)
    dims = given.get("dim", -1 if name == "fft" else None)
    dims = range(re.rank) if dims is None else [dims] if isinstance(dims, int) else dims
    for axis in sorted({norm_dim(d, re.rank) for d in dims}):
        re, im = _dft_axis(ctx, re, im, axis)
    if im is None:
        raise UnsupportedError(f"fft_{name} over no dims")
    return Complex(re, im)


def _dft_axis(ctx, re: Value, im: Value | None, axis: int) -> tuple[Value, Value]:
    # (re + i im)(C - i S) = (re C + im S) + i (im C - re S), along `axis`
    cos, sin = _dft_matrix(ctx, re.shape[axis], re.dtype)
    last = re.rank - 1
    perm = list(range(re.rank))
    perm[axis], perm[last] = last, axis
    along = lambda v, w: _move(ctx, ctx.emit("matmul", [_move(ctx, v, perm), w]), perm)  # noqa: E731
    new_re, new_im = along(re, cos), ctx.emit("neg", [along(re, sin)])
    if im is not None:
        new_re = ctx.emit("add", [new_re, along(im, sin)])
        new_im = ctx.emit("add", [new_im, along(im, cos)])
    return new_re, new_im


def _move(ctx, v: Value, perm: list[int]) -> Value:
    return v if perm == sorted(perm) else ctx.emit("permute", [v], perm=tuple(perm))


def _dft_matrix(ctx, n: Any, dtype: DType) -> tuple[Value, Value]:
    """cos and sin of 2 pi (jk mod N) / N, (N, N); the angle reduced exactly in int64."""
    k = ctx.emit("arange", [], start=0, end=n, step=1, dtype=DType.int64)
    jk = ctx.emit("mul", [ctx.emit("unsqueeze", [k], axes=(1,)), k])
    jk = ctx.emit("remainder", [jk, ctx.const(n, DType.int64)])
    size = ctx.cast(ctx.const(n, DType.int64), dtype)
    turn = ctx.emit("mul", [ctx.cast(jk, dtype), ctx.const(2 * math.pi, dtype)])
    angle = ctx.emit("div", [turn, size])
    return ctx.emit("cos", [angle]), ctx.emit("sin", [angle])
