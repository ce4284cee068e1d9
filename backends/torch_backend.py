"""The torch backend: lower an IR graph to a ``torch.fx.GraphModule`` that calls torch ops.

Each IR node becomes one call of its entry in :data:`torch_ops.OPS` (attention becomes
``F.scaled_dot_product_attention``, linear ``F.linear``, and so on), so the program runs
eagerly with autograd, and ``torch.compile`` or ``torch.export`` can take the generated
module as it is (``runner.program``; ``runner.program.code`` shows its Python source).

Symbolic dims. Attributes such as a reshape target or an ``arange`` end may hold SymDim
expressions. Each symbol is read off the first graph input dim that is that bare symbol
(``input_ids.size(0)``) and the expressions become ``operator`` arithmetic on those sizes,
so one program serves every batch and sequence size, and under ``torch.compile`` the sizes
stay SymInts.

Parameters. An initializer whose name is in ``params`` (the model's parameters and buffers
by full name) reads THAT tensor object: the program registers the model's own Parameters
(``program.params.<full name>``), so ``runner.parameters()`` yields the model's Parameter
objects, each once, gradients land on them and an optimizer step is seen by both the model
and the program. Every other initializer (constants made by the frontend or by passes) is
converted from NumPy once into a frozen buffer under ``program.consts``. Without ``params``,
trainable initializers become fresh Parameters (a copy of the graph's weights).

Devices. ``lower(graph, "cuda", params)`` moves the model's own tensors in ``params`` to the
GPU *in place* (``t.data = t.data.to("cuda")``, as ``model.to("cuda")`` does), so model and
program keep sharing them; compile a model that is already on the GPU to avoid surprises.
Inputs must be on the program's device. Tensors the program makes (``arange``, ``full``)
go to the device of the first graph input, so ``runner.to(...)`` moves the whole program.

Kernels. ``torch_ops.ops_for(device)`` picks each IR op's function: on CUDA the fused
epilogues (skip norms, RMS norm, bias+GELU, rotary) call Triton kernels when Triton is
installed (``backends/triton_kernels.py``; ``TGRAPH_TRITON=0`` turns them off), and the
program's code names them (``triton_skip_layer_norm``).

CUDA graphs. On CUDA, with autograd off (``torch.no_grad()`` / ``torch.inference_mode()``),
the runner can capture one CUDA graph per input signature (shapes, dtypes, devices) and
replay it: see :class:`CudaGraphs` and the ``cuda_graphs`` argument of :func:`lower`.
"""

from __future__ import annotations

import keyword
import operator
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from tgraph.ir import DType, Graph, SymDim, Value
from tgraph.ir.ops import get_op
from tgraph.tensors import torch_dtype

from . import torch_onednn
from .errors import LoweringError
from .torch_cuda_graphs import CudaGraphs, can_replay
from .torch_ops import ALIAS_OPS, CREATION_OPS, TUPLE_OPS, ops_for
from .torch_quant import PackedSources, emit_packed, release_packed, restore_packed, shared


def lower(
    graph: Graph,
    device: str = "cpu",
    params: Mapping[str, torch.Tensor] | None = None,
    *,
    cuda_graphs: bool | None = None,
    pack_linears: bool = False,
) -> TorchRunner:
    """Lower ``graph`` to a :class:`TorchRunner` on ``device``.

    Args:
        graph: the (optimized) graph.
        device: "cpu" or "cuda" (or "cuda:N").
        params: the model's parameters and buffers by full name; initializers with these
            names use these very tensors (moved to ``device`` in place when they are not
            there yet). Tensors whose shape or dtype differ from the initializer's are not
            used: the initializer's own value is.
        cuda_graphs: capture and replay CUDA graphs when autograd is off: ``None`` (the
            default) does so on CUDA devices, ``True`` forces it on wherever inputs are CUDA
            tensors, ``False`` never does.
        pack_linears: run fp32 linears with a constant weight on oneDNN's kernel with the
            weight packed once (CPU; backends/torch_onednn.py), for programs that never
            train: the packed weight is a snapshot without a gradient.

    Returns:
        An ``nn.Module`` called with the graph inputs (a sequence of tensors in graph-input
        order) that returns the graph outputs as a list.
    """
    dev = _canonical_device(device)
    if params:
        move_in_place(params, dev)
    program = build_program(graph, params, dev, pack_linears=pack_linears)
    if cuda_graphs is None:
        cuda_graphs = dev.type == "cuda"
    return TorchRunner(program, dev, cuda_graphs=cuda_graphs)


def _canonical_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LoweringError(f"device {str(device)!r}: torch sees no CUDA GPU; use 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise LoweringError(f"device {str(device)!r}: the torch backend runs on cpu or cuda")
    return dev


def move_in_place(tensors: Mapping[str, torch.Tensor], device: torch.device) -> None:
    """Move each distinct tensor to ``device`` keeping the tensor object (like ``Module.to``)."""
    seen: set[int] = set()
    for t in tensors.values():
        if id(t) in seen or t.device == device:
            continue
        seen.add(id(t))
        with torch.no_grad():
            t.data = t.data.to(device)
            if t.grad is not None:
                t.grad = t.grad.to(device)


# -- the runner ------------------------------------------------------------------------------


class TorchRunner(nn.Module):
    """A lowered graph: ``runner(inputs) -> outputs`` (lists of tensors, graph order).

    Attributes:
        program: the ``torch.fx.GraphModule``; it holds the parameters and constants.
        device: the device it was lowered for.
        cuda_graphs: whether calls without autograd on CUDA inputs replay CUDA graphs.
    """

    def __init__(self, program: fx.GraphModule, device: torch.device, cuda_graphs: bool = False):
        super().__init__()
        self.program = program
        self.device = device
        self.cuda_graphs = cuda_graphs
        self._graphs: CudaGraphs | None = None

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.cuda_graphs and can_replay(inputs):
            if self._graphs is None:
                self._graphs = CudaGraphs(self.program)
            outputs = self._graphs.run(inputs)
            if outputs is not None:
                return outputs
        return list(self.program(*inputs))

    def release_constants(self) -> None:
        """Let the graph drop its int4 arrays, and the fp32 ones of oneDNN-packed linears,
        that this program holds packed (one copy of the weights, not two);
        :meth:`restore_constants` rebuilds them."""
        release_packed(self.program, self.program.meta.get("packed_int4", []))
        torch_onednn.release(self.program.meta.get("onednn_linears", []))

    def restore_constants(self) -> None:
        restore_packed(self.program, self.program.meta.get("packed_int4", []))
        torch_onednn.restore(self.program, self.program.meta.get("onednn_linears", []))

    def __getstate__(self) -> dict[str, Any]:
        torch_onednn.refuse_pickle(self.program)
        # Captured CUDA graphs cannot be copied or pickled; a copy captures its own.
        state = self.__dict__.copy()
        state["_graphs"] = None
        return state

    def extra_repr(self) -> str:
        return f"device={str(self.device)!r}, cuda_graphs={self.cuda_graphs}"


# -- building the fx program -------------------------------------------------------------------


def build_program(
    graph: Graph,
    params: Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    pack_linears: bool = False,
) -> fx.GraphModule:
    """The ``torch.fx.GraphModule`` that computes ``graph`` (see the module docstring;
    ``pack_linears``: see :func:`lower`)."""
    builder = _ProgramBuilder(graph, params or {}, torch.device(device))
    builder.pack_linears = pack_linears and torch_onednn.available(builder.device)
    return builder.build()


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _identifier(text: str, taken: set[str]) -> str:
    """A fresh Python identifier derived from ``text``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text) or "v"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"_{name}"
    base, n = name, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


class _ProgramBuilder:
    """Walks the IR graph once, emitting fx nodes and installing tensors on a root module."""

    def __init__(self, graph: Graph, params: Mapping[str, torch.Tensor], device: torch.device):
        self.graph = graph
        self.params = params
        self.device = device
        self.ops = ops_for(device)
        self.fx = fx.Graph()
        self.root = nn.Module()
        self.root.params = nn.Module()  # the model's own tensors, under their full names
        self.root.consts = nn.Module()  # frozen constants converted from NumPy
        self.env: dict[int, fx.Node] = {}  # id(Value) -> fx node
        self.dims: dict[SymDim, Any] = {}  # symbolic dim -> fx node computing it
        self.symbol_sources: dict[str, tuple[fx.Node, int]] = {}
        self.device_node: Any = None
        self.placeholder_names: set[str] = set()
        self.const_names: set[str] = set()
        self.packed: PackedSources = []  # int4 weights emitted on torch's packed layout
        self.pack_linears = False  # fp32 linears on oneDNN's packed kernel (torch_onednn)
        self.onednn: torch_onednn.OneDNNSources = []  # weights emitted on oneDNN's layout

    def build(self) -> fx.GraphModule:
        for v in self.graph.inputs:
            node = self.fx.placeholder(_identifier(v.name, self.placeholder_names))
            self.env[id(v)] = node
            for axis, d in enumerate(v.shape):
                if isinstance(d, SymDim) and d.is_symbol():
                    self.symbol_sources.setdefault(d.name, (node, axis))
        for node in self.graph.nodes:
            self.emit(node)
        self.fx.output(tuple(self.value(v) for v in self.graph.outputs))
        name = _identifier(self.graph.name, set())
        program = fx.GraphModule(self.root, self.fx, class_name=name)
        program.graph.lint()
        program.meta["packed_int4"] = self.packed
        program.meta["onednn_linears"] = self.onednn
        return program

    # -- values ------------------------------------------------------------------------------

    def value(self, v: Value) -> fx.Node:
        node = self.env.get(id(v))
        if node is None:
            if v.const is None:
                raise LoweringError(f"value %{v.name} is used before it is defined")
            node = self.fx.get_attr(self.install(v))
            self.env[id(v)] = node
        return node

    def install(self, v: Value) -> str:
        """Register the tensor for initializer ``v``; return its attribute path."""
        tensor = self.params.get(v.name)
        if tensor is not None and _fits(tensor, v):
            if self.pack_linears:  # inference only: a copy of its own, see _snapshot
                return self._snapshot(v, tensor)
            return "params." + _install(self.root.params, v.name, tensor)
        if v.trainable and self.params:
            warnings.warn(
                f"torch backend: trainable initializer {v.name!r} has no model tensor of "
                f"type {v.type} in params; it is lowered as a frozen constant",
                stacklevel=4,
            )
        tensor = _from_numpy(v.const).to(self.device)
        if v.trainable and not self.params:
            return "params." + _install(self.root.params, v.name, nn.Parameter(tensor))
        name = _identifier(v.name, self.const_names)
        self.root.consts.register_buffer(name, tensor)
        return f"consts.{name}"

    def _snapshot(self, v: Value, tensor: torch.Tensor) -> str:
        """A frozen copy of a model tensor for an inference-only program (``pack_linears``),
        which the graph's constant then views too: neither keeps the model's storage alive,
        so a model loaded from a mapped checkpoint frees the whole mapping when dropped
        (its linears are packed copies already)."""
        copy = tensor.detach().clone()
        if copy.dtype != torch.bfloat16:
            v.const = copy.numpy()
        name = _identifier(v.name, self.const_names)
        self.root.consts.register_buffer(name, copy)
        return f"consts.{name}"

    # -- symbolic dims -------------------------------------------------------------------------

    def dim(self, d: Any) -> Any:
        """An int, or the fx node that computes symbolic dim ``d`` from the input sizes."""
        if not isinstance(d, SymDim):
            return int(d)
        if d not in self.dims:
            self.dims[d] = self._polynomial(d)
        return self.dims[d]

    def _polynomial(self, d: SymDim) -> Any:
        total: Any = None
        for monomial, coeff in d.terms:
            term: Any = None
            for atom in monomial:
                factor = self._atom(atom)
                term = factor if term is None else self.call(operator.mul, term, factor)
            if term is None:
                term = coeff
            elif coeff != 1:
                term = self.call(operator.mul, term, coeff)
            total = term if total is None else self.call(operator.add, total, term)
        return total

    def _atom(self, atom: Any) -> Any:
        if atom.kind == "sym":
            if atom.name not in self.symbol_sources:
                raise LoweringError(
                    f"symbolic dim {atom.name!r} is not a dim of any graph input, "
                    "so its value is unknown at run time"
                )
            placeholder, axis = self.symbol_sources[atom.name]
            return self.fx.call_method("size", (placeholder, axis))
        if atom.kind in ("max", "min"):
            return self.call(max if atom.kind == "max" else min, *(self.dim(a) for a in atom.args))
        inner = self.dim(atom.expr)
        return self.call(
            operator.floordiv if atom.kind == "floordiv" else operator.mod, inner, atom.k
        )

    def attr(self, x: Any) -> Any:
        if isinstance(x, SymDim):
            return self.dim(x)
        if isinstance(x, DType):
            return torch_dtype(x)
        if isinstance(x, tuple):
            return tuple(self.attr(e) for e in x)
        return x

    def device_arg(self) -> Any:
        """Where created tensors go: the first input's device (so ``.to()`` moves them too)."""
        if self.device_node is None:
            if self.graph.inputs:
                first = self.env[id(self.graph.inputs[0])]
                self.device_node = self.call(getattr, first, "device")
            else:
                self.device_node = self.device
        return self.device_node

    # -- nodes ---------------------------------------------------------------------------------

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> fx.Node:
        return self.fx.call_function(fn, args, kwargs)

    def emit(self, node: Any) -> None:
        if emit_packed(self, node):  # a compressed linear on a packed CPU kernel
            return
        if self.pack_linears and torch_onednn.emit_onednn_linear(self, node):
            return  # an fp32 linear of an inference-only program, on oneDNN
        fn = self.ops.get(node.op)
        if fn is None:
            module = node.meta.get("module")
            where = f" (from {module})" if module else ""
            raise LoweringError(
                f"torch backend: no lowering for op {node.op!r} at node %{node.name}{where}"
            )
        opdef = get_op(node.op)
        inputs = list(node.inputs)
        if opdef.max_inputs <= 8:  # absent trailing optional inputs are passed as None
            inputs += [None] * (opdef.max_inputs - len(inputs))
        args = tuple(None if v is None else self.value(v) for v in inputs)
        if node.op in ALIAS_OPS:
            self.env[id(node.outputs[0])] = args[0]
            return
        kwargs = {k: self.attr(v) for k, v in node.attrs.items()}
        if node.op in CREATION_OPS:
            kwargs["device"] = self.device_arg()
        name = node.outputs[0].name if len(node.outputs) == 1 else node.op
        call = self.fx.create_node("call_function", fn, args, kwargs, name=_identifier(name, set()))
        if len(node.outputs) == 1 and node.op not in TUPLE_OPS:
            self.env[id(node.outputs[0])] = call
            return
        for i, out in enumerate(node.outputs):
            item = self.fx.create_node(
                "call_function", operator.getitem, (call, i), name=_identifier(out.name, set())
            )
            self.env[id(out)] = item


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """A torch copy of a constant, keeping 0-d arrays 0-d (bf16 through its int16 bits).

    Arrays of at least 4 KiB (weights a pass made, such as a merged QKV weight, and
    quantized codes: no kernel writes a constant) are shared with the graph instead, so the
    program and the graph hold them once.
    """
    if array.dtype.kind in "iuf" and array.dtype.name != "bfloat16" and array.nbytes >= 4096:
        return shared(array)
    array = np.array(array, copy=True)  # writable and contiguous, any rank
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _fits(tensor: torch.Tensor, v: Value) -> bool:
    return tuple(tensor.shape) == tuple(v.shape) and tensor.dtype == torch_dtype(v.dtype)


def _install(root: nn.Module, name: str, tensor: torch.Tensor) -> str:
    """Register ``tensor`` under dotted ``name`` in a module tree below ``root``.

    Parameters register as parameters (the same object), other tensors as buffers. A name
    that does not fit a module tree (a part that is not an identifier, or that clashes with
    an ``nn.Module`` attribute) goes flat under ``root`` instead. Returns the path used.
    """
    *parents, leaf = name.split(".")
    module = _module_for(root, parents, leaf)
    if module is None:
        module, leaf = root, _identifier("_" + name, set(root._parameters) | set(root._buffers))
        name = leaf
    if isinstance(tensor, nn.Parameter):
        module.register_parameter(leaf, tensor)
    else:
        module.register_buffer(leaf, tensor)
    return name


def _module_for(root: nn.Module, parents: list[str], leaf: str) -> nn.Module | None:
    """The module at ``root.<parents>`` (created as needed) if ``leaf`` can go there, else None."""
    if not all(_IDENT.fullmatch(p) or p.isdigit() for p in (*parents, leaf)):
        return None
    module: nn.Module | None = root
    for part in parents:  # check first, so a rejected name leaves no empty modules behind
        child = module._modules.get(part) if module is not None else None
        if child is None and hasattr(module if module is not None else _EMPTY, part):
            return None
        module = child
    if hasattr(module if module is not None else _EMPTY, leaf):
        return None
    module = root
    for part in parents:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    return module


_EMPTY = nn.Module()  # what a freshly created tree level has: nn.Module's own attributes
