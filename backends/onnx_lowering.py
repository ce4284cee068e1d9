"""Lower a tgraph IR graph to an ONNX ``ModelProto``.

The model uses standard ONNX ops at opset :data:`OPSET` plus ONNX Runtime's
``com.microsoft`` contrib ops for some fused ops (see ``onnx_ops/``, which holds the
table op -> lowering function). One model runs at every batch and sequence size:

- Graph inputs and outputs declare symbolic dims as ``dim_param`` names (``batch``, ``seq``).
- Attributes that hold symbolic dims (a reshape target, a slice end, an ``arange`` end, ...)
  become int64 tensors computed at run time: ``Shape`` of the graph input where each symbol
  first appears, then ``Add``/``Mul``/floor division for expressions. Each expression is
  computed once and shared (:meth:`Lowering.dim`).

Weights stay ONNX initializers under their parameter names; an initializer that no ONNX
node reads (a weight that only a ``linear`` reads gets a transposed copy) is left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tgraph.ir import DType, Graph, Node, SymDim, Value
from tgraph.ir.dims import DimLike

from .errors import LoweringError
from .onnx_dims import DimLowering
from .onnx_views import underlying, viewed_as

OPSET = 23  # RMSNormalization and Attention are standard from 23 on
MS_DOMAIN = "com.microsoft"

ONNX_DTYPE = {
    DType.float32: TensorProto.FLOAT,
    DType.float16: TensorProto.FLOAT16,
    DType.bfloat16: TensorProto.BFLOAT16,
    DType.float64: TensorProto.DOUBLE,
    DType.int64: TensorProto.INT64,
    DType.int32: TensorProto.INT32,
    DType.int16: TensorProto.INT16,
    DType.int8: TensorProto.INT8,
    DType.uint8: TensorProto.UINT8,
    DType.bool: TensorProto.BOOL,
}
_CACHED_CONST_ELEMENTS = 64  # small constants are shared by value
EXTERNAL_MIN_BYTES = 4096  # to_onnx(external=...): arrays this big stay out of the proto
EXTERNAL_LOCATION = "tgraph-in-memory"  # the location an in-memory initializer names
_EXTERNAL_DTYPES = {
    np.dtype(t) for t in (np.float32, np.float16, np.int64, np.int32, np.int8, np.uint8)
}


class Lowering(DimLowering):
    """The state of one IR -> ONNX lowering, and the helpers that lowering functions use.

    Lowering functions (``onnx_ops/``) receive this object, the IR node and the ONNX
    names of its inputs, emit ONNX nodes with :meth:`op` and return the ONNX names of the
    node's outputs.
    """

    def __init__(
        self,
        graph: Graph,
        fused_kernels: bool = True,
        external: dict[str, np.ndarray] | None = None,
        device: str = "cpu",
    ):
        self.graph = graph
        self.fused_kernels = fused_kernels
        self.device = device  # the execution provider's device: some kernels only pay on one
        self.external = external  # see to_onnx: big arrays go here, not into the proto
        self.fold_at_load = True  # ORT folds constant Transposes at load (see to_onnx)
        self.prepack = False  # linear weights read as FusedMatMul's B (see prepacked_product)
        self.in_place = True  # the session reads external arrays in place (see finish)
        self._prepacked: set[str] = set()  # names some FusedMatMul reads as its B
        self._folded: set[str] = set()  # outputs of the nodes ORT folds at load (see at_load)
        self.load_only: set[str] = set()  # external arrays the session only reads at load
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: dict[int, str] = {}  # id(Value) -> ONNX name
        self._bound: set[str] = set()  # ONNX names that some IR value has
        self._used: set[str] = set()
        self._reserved = {v.name for v in graph.values()}
        self._counter = 0
        self._consts: dict[tuple, str] = {}
        self._dims: dict[tuple[DimLike, bool], str] = {}
        self._shapes: dict[tuple[DimLike, ...], str] = {}
        self._transposed: dict[tuple[int, DType], str] = {}
        self._widened: dict[str, str] = {}  # ONNX name of a 16-bit float -> its float32 Cast
        self._shared: dict[tuple, str] = {}  # see shared()
        self.fp32_emulated: dict[str, int] = {}  # IR op -> nodes lowered via lower_in_fp32
        self._const_values: dict[str, Value] = {}
        self._pinned: set[str] = set()  # cached names: never renamed
        self._hint = "t"
        self._step_start = 0
        self._symbol_source: dict[str, tuple[str, int]] = {}
        for v in graph.inputs:
            self._names[id(v)] = v.name
            self._bound.add(v.name)
            self._used.add(v.name)
            for axis, d in enumerate(v.shape):
                if isinstance(d, SymDim) and d.is_symbol():
                    self._symbol_source.setdefault(d.name, (v.name, axis))

    # -- names -----------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A tensor name used nowhere in the IR graph or the ONNX model so far."""
        while True:
            self._counter += 1
            name = f"{hint}__{self._counter}"
            if name not in self._reserved and name not in self._used:
                self._used.add(name)
                return name

    def name(self, v: Value | None) -> str:
        """The ONNX name of an IR value ("" for an absent optional input)."""
        if v is None:
            return ""
        v = underlying(v)
        key = id(v)
        if key not in self._names:
            if v.const is None:
                raise LoweringError(f"value %{v.name} is used before it is defined")
            # Emitted by finish() only if an ONNX node reads it (linear reads a transpose).
            self._const_values[v.name] = v
            self._used.add(v.name)
            self._names[key] = v.name
            self._bound.add(v.name)
        return self._names[key]

    def finish(self, outputs: Sequence[str]) -> list[onnx.TensorProto]:
        """The initializers: the IR constants that ONNX nodes or outputs read, then ours."""
        read = set(outputs)
        direct = set(outputs)  # read by a node that runs, not only once at load
        for n in self.nodes:
            read.update(n.input)
            if n.output[0] in self._folded:
                continue  # a node ORT folds at load: its inputs are read once
            if n.op_type == "FusedMatMul" and n.input[1] in self._prepacked:
                direct.add(n.input[0])  # B is prepacked at load
                continue
            direct.update(n.input)
        weights = [
            self.tensor(np.asarray(v.const), name, snapshot=self.in_place and name in direct)
            for name, v in self._const_values.items()
            if name in read
        ]
        if self.external is not None:
            runs = direct if self.in_place else set()  # read while the session runs
            self.load_only.update(n for n in self.external if n in read and n not in runs)
        return weights + self.initializers

    def prepacked_only(self) -> set[str]:
        """The external arrays that only FusedMatMul nodes read, as their B: MLAS prepacks
        them at load, so a session may share them (``ort_load.open_session``). Call after
        :meth:`finish`."""
        readers: dict[str, bool] = {}
        for n in self.nodes:
            for i, x in enumerate(n.input):
                only_b = n.op_type == "FusedMatMul" and i == 1 and x in self._prepacked
                readers[x] = readers.get(x, True) and only_b
        return {n for n in self.external or () if readers.get(n, False)}

    @contextlib.contextmanager
    def lowering(self, node: Node) -> Iterator[None]:
        """Name the ONNX nodes and temporaries emitted for ``node`` after it."""
        self._hint = node.name
        self._step_start = len(self.nodes)
        try:
            yield
        except LoweringError:
            raise
        except Exception as e:
            module = node.meta.get("module")
            where = f" (from {module})" if module else ""
            raise LoweringError(f"cannot lower {node.op} node %{node.name}{where}: {e}") from e

    def bind(self, node: Node, names: Sequence[str]) -> None:
        """Record the ONNX names of ``node``'s outputs, renaming fresh ones to the IR names."""
        if len(names) != len(node.outputs):
            raise LoweringError(
                f"lowering of {node.op} gave {len(names)} outputs, want {len(node.outputs)}"
            )
        for v, name in zip(node.outputs, names):
            if name and self._rename(name, v.name):
                name = v.name
            self._names[id(v)] = name
            self._bound.add(name)

    def _rename(self, old: str, new: str) -> bool:
        """Rename a temporary made while lowering the current node (keeps dumps readable)."""
        if old in self._pinned or old in self._bound or new in self._used:
            return False
        step = self.nodes[self._step_start :]
        if not any(old in n.output for n in step):
            return False
        for n in step:
            for field in (n.input, n.output):
                for i, x in enumerate(field):
                    if x == old:
                        field[i] = new
        self._used.add(new)
        return True

    # -- emitting --------------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[str], *, domain: str = "", **attrs: Any) -> str:
        """Emit a one-output node and return its output name."""
        return self.op_n(op_type, inputs, 1, domain=domain, **attrs)[0]

    def op_n(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: int | Sequence[str],
        *,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Emit a node; ``outputs`` is a count or a list of names ("" skips an optional one)."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{self._hint}/{op_type}") for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        inputs, outputs = _strip(inputs), _strip(outputs)
        node_name = self.fresh(f"{self._hint}/{op_type}")
        self.nodes.append(
            helper.make_node(
                op_type,
                list(inputs),
                list(outputs),
                name=node_name,
                domain=domain or None,
                **attrs,
            )
        )
        return list(outputs)

    def copy(self, name: str, hint: str) -> str:
        """An Identity of ``name``, named after ``hint``."""
        self._hint = hint
        return self.op("Identity", [name])

    # -- constants -------------------------------------------------------------------------

    def const(self, array: np.ndarray | float | int | bool, dtype: DType | None = None) -> str:
        """An initializer holding ``array`` (small ones are shared by value)."""
        array = np.asarray(array, dtype=dtype.numpy if dtype is not None else None)
        key = None
        if array.size <= _CACHED_CONST_ELEMENTS:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh("const")
        self.initializers.append(self.tensor(array, name))
        if key is not None:
            self._consts[key] = name
            self._pinned.add(name)
        return name

    def tensor(self, array: np.ndarray, name: str, snapshot: bool = True) -> onnx.TensorProto:
        """An initializer proto; with ``external`` set, a big array stays a NumPy array there
        and the proto only names it (data_location EXTERNAL), so no bytes are copied.

        ``snapshot``: the session reads the array while it runs, so one that views memory
        it does not own (the frontend's weights view the model's parameters) is copied and
        later changes to the model do not leak in. Arrays only read at load (by a Transpose
        that ORT folds, see :meth:`transposed_weight`, or prepacked, see
        :meth:`prepacked_product`), and all arrays when the session copies what it is
        given (:attr:`in_place` False), are read once and not copied.
        """
        if (
            self.external is None
            or array.nbytes < EXTERNAL_MIN_BYTES
            or array.dtype not in _EXTERNAL_DTYPES
        ):
            return numpy_helper.from_array(array, name)
        keep = array.flags.c_contiguous and (array.flags.owndata or not snapshot)
        self.external[name] = array if keep else np.array(array, order="C", copy=True)
        proto = onnx.TensorProto(name=name, data_type=ONNX_DTYPE[DType.from_numpy(array.dtype)])
        proto.dims.extend(array.shape)
        proto.data_location = onnx.TensorProto.EXTERNAL
        proto.external_data.add(key="location", value=EXTERNAL_LOCATION)
        return proto

    def at_load(self, name: str) -> str:
        """Mark ``name``, the output of a node whose inputs are all constants or outputs
        marked so, as computed once by ONNX Runtime's constant folding at session load
        (``fold_at_load``): an external array only such nodes read is load-only, which the
        generator releases after load (backends/ort_cache.py)."""
        self._folded.add(name)
        return name

    def shared(self, key: tuple, build: Callable[[], str]) -> str:
        """The ONNX name ``build()`` returned the first time ``key`` was asked for: one node
        for a value every layer needs (the int32 sequence lengths of each cache attention)."""
        if key not in self._shared:
            self._shared[key] = build()
            self._pinned.add(self._shared[key])
        return self._shared[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant."""
        return self.const(np.asarray(list(values), dtype=np.int64).reshape(-1))

    def transposed_weight(self, w: Value) -> str:
        """A constant weight (out, in) stored once as its transpose (in, out) for MatMul.

        A weight stored in a narrower type than ``w.dtype`` (a bf16 weight of a node that
        computes in float32, see :meth:`lower_in_fp32`) stays narrow in the file and is
        widened by a Cast that ONNX Runtime folds at session load.
        """
        key = (id(underlying(w)), w.dtype)
        if key not in self._transposed and self._transpose_at_load(w):
            # ORT folds this Transpose at session load, prepacks the result for MatMul and
            # drops the folded copy: no transposed copy of the weights stays in memory.
            self._transposed[key] = self.op("Transpose", [self.name(w)], perm=[1, 0])
            self._pinned.add(self._transposed[key])
            self._folded.add(self._transposed[key])
        if key not in self._transposed:
            name = self.fresh(f"{w.name}.T")
            array = np.ascontiguousarray(np.asarray(w.const).T)
            self.initializers.append(self.tensor(array, name))
            if DType.from_numpy(array.dtype) is not w.dtype:
                name = self.op("Cast", [name], to=ONNX_DTYPE[w.dtype])
            self._transposed[key] = name
            self._pinned.add(name)
        return self._transposed[key]

    def prepacked_product(self, x: str, w: Value) -> str | None:
        """``x @ w.T`` for a constant weight (out, in) as ``com.microsoft.FusedMatMul``
        with ``transB=1``, or None when :attr:`prepack` is off or ``w`` is not such a
        weight. MLAS prepacks B straight from the graph's array at session load, where
        ``Transpose`` + ``MatMul`` would first fold a transposed copy (1.3 GB more written
        for the 336M Llama, docs/generation.md)."""
        if not (self.prepack and w.const is not None and self._transpose_at_load(w)):
            return None
        name = self.name(w)
        self._prepacked.add(name)
        return self.op("FusedMatMul", [x, name], domain=MS_DOMAIN, transB=1, alpha=1.0)

    def _transpose_at_load(self, w: Value) -> bool:
        """In-memory sessions (``external`` set) with ORT's constant folding on transpose big
        weights at load; a file (save_files, tests) stores them pre-transposed."""
        array = np.asarray(w.const)
        return (
            self.external is not None
            and self.fold_at_load
            and array.nbytes >= EXTERNAL_MIN_BYTES
            and DType.from_numpy(array.dtype) is w.dtype
        )

    # -- 16-bit floats without ORT kernels ---------------------------------------------------

    def lower_in_fp32(self, node: Node, fn: Any, low: DType) -> list[str]:
        """Lower ``node`` computing in float32 between Casts, for an op that has no ORT CPU
        kernel in ``low`` (bf16 has almost none): the low inputs are widened (one Cast per
        tensor, shared by later nodes), ``fn`` sees float32 types, and the low outputs are
        rounded back. That is exactly the IR's "compute in fp32, round the result" rule.
        """
        names = [self.name(v) for v in node.inputs]
        first = len(self.nodes)
        wide = [
            self._widen(name) if v is not None and v.dtype is low else name
            for v, name in zip(node.inputs, names)
        ]
        result = fn(self, viewed_as(node, low, DType.float32), *wide)
        self._drop_unread_casts(first)
        results = [result] if isinstance(result, str) else list(result)
        out = [
            self.op("Cast", [r], to=ONNX_DTYPE[low]) if r and v.dtype is low else r
            for v, r in zip(node.outputs, results)
        ]
        for n in self.nodes[first:]:
            n.doc_string = f"{node.op} computed in float32: ORT CPU has no {low.name} kernel"
        self.fp32_emulated[node.op] = self.fp32_emulated.get(node.op, 0) + 1
        return out

    def _widen(self, name: str) -> str:
        if name not in self._widened:
            self._widened[name] = self.op("Cast", [name], to=TensorProto.FLOAT)
            self._pinned.add(self._widened[name])
        return self._widened[name]

    def _drop_unread_casts(self, first: int) -> None:
        """Remove the widening Casts made from ``first`` on that nothing reads (a linear
        weight is read pre-transposed instead), so the unused layout is not stored."""
        read = {x for n in self.nodes[first:] for x in n.input}
        for src, cast in list(self._widened.items()):
            made_here = any(cast in n.output for n in self.nodes[first:])
            if made_here and cast not in read:
                self.nodes = [n for n in self.nodes if cast not in n.output]
                del self._widened[src]


def _strip(names: Sequence[str]) -> list[str]:
    """Drop trailing "" (absent optional inputs or outputs)."""
    names = list(names)
    while names and not names[-1]:
        names.pop()
    return names
