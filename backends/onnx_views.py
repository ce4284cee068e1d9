"""Views of IR values and nodes under the types a lowering should emit.

``Lowering.lower_in_fp32`` hands a lowering function float32 views of a node's 16-bit
values, so the function emits float32 ONNX while the IR graph's types stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tgraph.ir import DType, Node, TensorType, Value
from tgraph.ir.dims import DimLike


class TypedValue:
    """A read-only view of an IR value under the type a lowering should emit for it.

    ``lower_in_fp32`` hands a lowering function float32 views of a node's 16-bit values,
    so the function emits float32 ONNX without the IR graph's types ever changing. Every
    other attribute (name, const, producer, ...) is the value's own.
    """

    __slots__ = ("value", "type")

    def __init__(self, value: Value, type: TensorType):
        self.value = value
        self.type = type

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> tuple[DimLike, ...]:
        return self.type.shape

    @property
    def rank(self) -> int:
        return len(self.type.shape)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.value, name)


class TypedNode:
    """A read-only view of a node whose inputs and outputs are :class:`TypedValue` s."""

    __slots__ = ("node", "inputs", "outputs")

    def __init__(self, node: Node, retype: Callable[[Value | None], Any]):
        self.node = node
        self.inputs = [retype(v) for v in node.inputs]
        self.outputs = [retype(v) for v in node.outputs]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)


def viewed_as(node: Node, old: DType, new: DType) -> TypedNode:
    """``node`` as a lowering should see it when it computes ``old`` values in ``new``."""

    def retype(v: Value | None) -> Any:
        if v is None or v.dtype is not old:
            return v
        return TypedValue(v, v.type._replace(dtype=new))

    return TypedNode(node, retype)


def underlying(v: Any) -> Any:
    """The IR value behind a view (a value itself otherwise)."""
    return v.value if isinstance(v, TypedValue) else v
