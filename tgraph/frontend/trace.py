"""torch.export -> tgraph IR.

``trace`` exports the model (non-strict, batch and sequence dims symbolic), keeps the
pre-dispatch ATen ops (linear, layer_norm, scaled_dot_product_attention, ...) instead of
decomposing them, and translates every FX node through the table in ``aten/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from tgraph.ir import DType, Graph, TensorType, Value

from .aten import TRANSLATORS, Translator
from .aten.complex_pairs import Complex, is_complex_node, translate_complex
from .convert import SymbolTable, UnsupportedError, ir_dtype, shared_view
from .defaults import example_sizes
from .dim_facts import fixed_sizes
from .export import SEQ_LIMIT_FIELDS, FrontendError, export, normalize_inputs
from .guards import multiple_guards, shape_guards
from .limits import dim_limits, index_ranges

# FX call_function targets that carry no computation once shapes are known.
_IGNORED = {
    "aten::_assert_scalar",
    "aten::sym_constrain_range_for_size",
    "aten::sym_constrain_range",
    "aten::_functional_assert_async",
    "aten::_assert_async",
}


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    path = re.sub(r"^L\['self'\]\.?", "", str(path))
    return path if not path.startswith("_empty") else ""


def _moe_hint(node: torch.fx.Node) -> str:
    """A note for an op that failed inside a mixture-of-experts block, whose routing
    (``histc``, data-dependent gathers) is the usual cause (frontend/export.py
    ``traceable_experts``)."""
    stack = node.meta.get("nn_module_stack") or {}
    for _path, cls in reversed(list(stack.values())):
        name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
        if re.search(r"Experts?$|MoE|Moe", name):
            return (f"; inside {name}, a mixture-of-experts layer (tgraph traces its experts "
                    "as moe_experts, or as transformers' batched_mm: docs/models.md)")  # fmt: skip
    return ""


def _source(node: torch.fx.Node) -> str:
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    if not frames:
        return ""
    # The innermost frame outside torch itself: the model line that called nn.Linear, not
    # torch/nn/modules/linear.py.
    outside = [f for f in frames if not os.path.abspath(f[0]).startswith(_TORCH_DIR)]
    file, line = (outside or frames)[-1]
    return f"{os.path.basename(file)}:{line}"


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


class TranslationContext:
    """State of one translation: the IR graph, FX node -> IR value, symbol names."""

    def __init__(self, graph: Graph, symbols: SymbolTable):
        self.graph = graph
        self.symbols = symbols
        self.env: dict[torch.fx.Node, Any] = {}
        self.node: torch.fx.Node | None = None  # the FX node being translated

    # -- reading FX arguments --------------------------------------------------------------------

    def value(self, arg: Any) -> Any:
        """An FX argument as IR values / dims / Python scalars (lists and tuples mapped)."""
        if isinstance(arg, torch.fx.Node):
            if arg not in self.env:
                raise FrontendError(f"{arg.name} is used before it is translated")
            result = self.env[arg]
            if isinstance(result, _Unsupported):
                raise UnsupportedError(result.why)
            return result
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, torch.SymInt):
            return self.symbols.convert(arg)
        return arg

    def meta_type(self, index: int | None = None) -> TensorType:
        """The dtype and shape torch.export recorded for the current node's output."""
        val = self.node.meta["val"]
        if index is not None:
            val = val[index]
        # a complex tensor's parts (aten/complex_pairs.py) have its shape and real dtype
        dtype = val.dtype.to_real() if val.dtype.is_complex else val.dtype
        return TensorType(ir_dtype(dtype), self.symbols.shape(val))

    # -- emitting ----------------------------------------------------------------------------------

    def emit(self, op: str, inputs: Sequence[Value | None], **attrs: Any) -> Value:
        node = self.emit_node(op, inputs, **attrs)
        return node.output

    def emit_node(self, op: str, inputs: Sequence[Value | None], **attrs: Any):
        meta = {"module": _module_path(self.node), "source": _source(self.node)}
        meta["aten"] = str(self.node.target)
        return self.graph.create_node(op, inputs, attrs, names=[self.node.name], meta=meta)

    def const(self, value: Any, dtype: DType) -> Value:
        """A scalar as a 0-d value; symbolic ints become a ``full`` node."""
        from tgraph.ir import SymDim

        if isinstance(value, SymDim):
            return self.emit("full", [], shape=(), value=value, dtype=dtype)
        if isinstance(value, torch.SymFloat | torch.SymBool):
            raise UnsupportedError(f"symbolic scalar {value} used as a tensor")
        return self.graph.add_const(value, dtype, hint=f"{self.node.name}_c")

    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.dtype == dtype else self.emit("cast", [v], dtype=dtype)


class _Unsupported:
    """A placeholder for an FX value the IR does not model (e.g. layer_norm's mean/rstd)."""

    def __init__(self, why: str):
        self.why = why


def _op_key(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = target.name()  # "aten::add.Tensor", or "aten::arange" for the default overload
        return name if "." in name else f"{name}.default"
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', str(target))}"


def _is_scalar_val(val: Any) -> bool:
    return isinstance(val, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool))


def _translate_node(ctx: TranslationContext, node: torch.fx.Node) -> Any:
    key = _op_key(node.target)
    if key.split(".")[0] in _IGNORED:  # any overload ("aten::_assert_scalar.default")
        return None
    val = node.meta.get("val")
    if _is_scalar_val(val):
        # Size arithmetic (sym_size, mul of sizes, ...): fold into a symbolic dim.
        if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool):
            try:
                return ctx.symbols.convert(val)
            except UnsupportedError as e:
                # A data-dependent size (tensor.item()) that only asserts read: fail at a
                # real use, naming it, not here.
                return _Unsupported(f"{e} ({key} reads a tensor's value)")
        return _Unsupported(f"scalar {key} producing {val!r} is not supported")
    if key in ("_operator.getitem", "operator.getitem"):
        seq, index = node.args
        return ctx.value(seq)[index]
    if is_complex_node(ctx, node):
        return translate_complex(ctx, key, node)
    translator: Translator | None = TRANSLATORS.get(key) or TRANSLATORS.get(key.split(".")[0])
    if translator is None:
        raise UnsupportedError(f"ATen op {key} has no tgraph mapping")
    return translator(ctx, *node.args, **node.kwargs)


def _check_types(ctx: TranslationContext, node: torch.fx.Node, result: Any) -> None:
    """The translated value must have exactly the dtype and shape torch.export recorded."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dtype.is_complex and not isinstance(result, Complex):
        raise UnsupportedError(f"{_op_key(node.target)} makes a complex tensor from real ones")
    if isinstance(result, Value) and isinstance(val, torch.Tensor):
        want = ctx.meta_type()
        if result.type != want:
            raise UnsupportedError(
                f"translation of {_op_key(node.target)} gives {result.type}, torch.export says {want}"
            )


def _translate(ep: ExportedProgram, graph: Graph, symbols: SymbolTable) -> list[Value]:
    ctx = TranslationContext(graph, symbols)
    sig = ep.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs}
    params = dict(ep.named_parameters())
    for node in ep.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            ctx.env[node] = _placeholder(ep, graph, symbols, specs[node.name], node, params)
            continue
        if node.op == "output":
            return _outputs(ctx, node, ep)
        if node.op != "call_function":
            raise FrontendError(f"unexpected FX node {node.op} {node.name}")
        try:
            result = _translate_node(ctx, node)
            _check_types(ctx, node, result)
        except (UnsupportedError, NotImplementedError) as e:
            module = _module_path(node) or "the top-level module"
            raise FrontendError(f"{e} (node {node.name}, from {module}){_moe_hint(node)}") from None
        ctx.env[node] = result
    raise FrontendError("exported graph has no output node")


def _placeholder(ep, graph, symbols, spec, node, params) -> Value | None:
    if spec.kind == InputKind.USER_INPUT:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None  # a constant (non-tensor) input, specialized by export
        try:
            shape = symbols.shape(val)
        except UnsupportedError as e:
            raise FrontendError(
                f"input {node.name}: shape {tuple(val.shape)} has a dim that is neither a "
                f"symbol nor k*symbol+r ({e}); export it with a plain Dim for that dim"
            ) from None
        return graph.add_input(node.name, ir_dtype(val.dtype), shape)
    if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
        target = spec.target
        if spec.kind == InputKind.PARAMETER:
            tensor = params[target] if target in params else ep.state_dict[target]
        elif target in ep.state_dict:
            tensor = ep.state_dict[target]
        else:
            tensor = ep.constants[target]
        array = shared_view(tensor)  # the model's own storage, read-only: no weight copy
        trainable = spec.kind == InputKind.PARAMETER and bool(tensor.requires_grad)
        v = graph.add_initializer(target, array, trainable=trainable)
        v.meta["param"] = spec.kind.name.lower()
        return v
    raise FrontendError(f"unsupported input kind {spec.kind} for {node.name}")


def _outputs(ctx: TranslationContext, node: torch.fx.Node, ep: ExportedProgram) -> list[Any]:
    """The user outputs; a buffer the forward writes (a cache of positions) is not one."""
    from torch.export.graph_signature import OutputKind

    kinds = [spec.kind for spec in ep.graph_signature.output_specs]
    leaves = []
    for arg, kind in zip(node.args[0], kinds):
        if kind != OutputKind.USER_OUTPUT:
            continue
        if isinstance(arg, torch.fx.Node) and isinstance(ctx.value(arg), Complex):
            raise FrontendError(f"output {arg.name} is complex: return torch.view_as_real of it")
        if isinstance(arg, torch.fx.Node):
            leaves.append(ctx.value(arg))
        else:
            leaves.append(arg)
    return leaves


def _name_symbols(ep: ExportedProgram) -> SymbolTable:
    """Name export's symbols after the input dims they first appear in: batch, seq, ..."""
    import sympy

    table = SymbolTable()
    used: set[str] = set()
    sig = ep.graph_signature
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in sig.user_inputs:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, d in enumerate(val.shape):
            if not isinstance(d, torch.SymInt):
                continue
            sym = d.node.expr
            if sym in table.names or sym.free_symbols & set(table.derived):
                continue
            base = {0: "batch", 1: "seq"}.get(axis, f"dim{axis}")
            name = base if base not in used else f"{node.name}_{base}"
            while name in used:
                name += "_"
            if isinstance(sym, sympy.Symbol):
                table.name(sym, name)
            elif not table.name_derived(sym, name):
                continue  # another expression: a use names it (convert's error)
            used.add(name)
    table.fixed = fixed_sizes(getattr(ep, "_guards_code", None) or [], _input_shapes(ep, table))
    return table


def _input_shapes(ep: ExportedProgram, table: SymbolTable) -> dict[str, tuple]:
    """The IR shape of each user input whose dims the table can read, by name."""
    shapes = {}
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in ep.graph_signature.user_inputs:
            try:
                shapes[node.name] = table.shape(val) if isinstance(val, torch.Tensor) else None
            except UnsupportedError:
                continue  # _placeholder reports it
    return {k: v for k, v in shapes.items() if v is not None}


def trace(
    model: torch.nn.Module | ExportedProgram, example_inputs: Any = None, dynamic: bool = True
) -> Graph:
    """Trace a PyTorch model into a tgraph Graph.

    Args:
        model: an ``nn.Module`` (put in eval mode by the caller for inference) or an
            ``ExportedProgram``.
        example_inputs: a tensor, a tuple of positional args, or a dict of kwargs.
        dynamic: keep batch (dim 0) and sequence (dim 1) sizes symbolic.

    Returns:
        The graph. ``graph.meta`` records the input and output structure
        (``in_spec``, ``out_spec``, ``input_names``, ``output_leaves``) so callers can
        feed it the model's own arguments and rebuild the model's own outputs.

    Raises:
        FrontendError: export failed, or an op has no mapping (naming op and module).
    """
    if isinstance(model, ExportedProgram):
        ep = model
        name = "exported"
        call_info = {}
    else:
        args, kwargs = normalize_inputs(example_inputs)
        call_info: dict = {}
        ep = export(model, args, kwargs, dynamic, call_info)
        name = type(model).__name__
    functional = _is_functional(ep)
    if not functional:
        ep = ep.run_decompositions({})
    try:
        graph, leaves = _translate_program(ep, name)
    except FrontendError:
        if not functional:
            raise
        # The training IR held something only functionalization handles: translate that.
        ep = ep.run_decompositions({})
        graph, leaves = _translate_program(ep, name)
    _finish_outputs(graph, ep, leaves)
    graph.meta["in_spec"] = ep.call_spec.in_spec
    graph.meta["out_spec"] = ep.call_spec.out_spec
    graph.meta["input_names"] = [v.name for v in graph.inputs]
    graph.meta.update(call_info)
    examples = getattr(ep, "example_inputs", None) if example_inputs is None else example_inputs
    graph.meta["example_sizes"] = example_sizes(graph, examples)
    graph.meta["index_ranges"] = index_ranges(graph)
    fields = [(f, getattr(getattr(model, "config", None), f, None)) for f in SEQ_LIMIT_FIELDS]
    symbols = _name_symbols(ep)
    # an explicit Dim starts at 0, Dim.AUTO and a given program's dims at export's floor 2
    floor = 1 if call_info.get("auto_dims") is False else 2
    graph.meta["dim_limits"] = dim_limits(ep.range_constraints, symbols.names, fields, floor)
    guards = multiple_guards(symbols.multiples)
    graph.meta["shape_guards"] = guards + shape_guards(
        getattr(ep, "_guards_code", None) or [], graph
    )
    graph.remove_unused_initializers()
    graph.verify()
    return graph


def _translate_program(ep: ExportedProgram, name: str) -> tuple[Graph, list[Any]]:
    graph = Graph(name)
    return graph, _translate(ep, graph, _name_symbols(ep))


def _is_functional(ep: ExportedProgram) -> bool:
    """Whether export's training IR is already free of mutation and higher-order ops.

    Such a graph translates as it is; ``run_decompositions({})`` (functionalization, with an
    empty table so linear/layer_norm/sdpa/gelu stay whole) would only rename ops
    (``dropout`` -> ``clone``, ``reshape`` -> ``view``) and takes 5-7 s on BERT-base.
    """
    for node in ep.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target._schema.is_mutable:
                return False
        elif node.op not in ("placeholder", "output", "call_function", "get_attr"):
            return False
        elif node.op == "get_attr" or isinstance(node.target, torch._ops.HigherOrderOperator):
            return False
    sig = ep.graph_signature
    return not (sig.buffers_to_mutate or sig.user_inputs_to_mutate)


def _output_names(ep: ExportedProgram, n: int) -> list[str]:
    """Readable output names from the output pytree: logits, last_hidden_state, output_0."""
    spec = ep.call_spec.out_spec
    dummy = pytree.tree_unflatten(list(range(n)), spec) if spec is not None else list(range(n))
    paths = pytree.tree_flatten_with_path(dummy)[0]
    names = []
    for path, _ in paths:
        parts = []
        for k in path:
            key = getattr(k, "key", None)
            if key is None:
                key = getattr(k, "idx", None)
            if key is None:
                key = getattr(k, "name", "")
            parts.append(str(key))
        text = ".".join(parts) if parts else "output"
        if text[0].isdigit():
            text = f"output_{text}"
        names.append(re.sub(r"[^A-Za-z0-9_.]", "_", text))
    return names


def _finish_outputs(graph: Graph, ep: ExportedProgram, leaves: list[Any]) -> None:
    names = _output_names(ep, len(leaves))
    output_leaves: list[tuple[str, Any]] = []
    for name, leaf in zip(names, leaves):
        if isinstance(leaf, Value):
            if leaf.producer is not None and leaf not in graph.outputs and not graph.has_name(name):
                graph.rename(leaf, name)
            output_leaves.append(("value", len(graph.outputs)))
            graph.outputs.append(leaf)
        else:
            output_leaves.append(("const", leaf))
    graph.meta["output_leaves"] = output_leaves
    graph.meta["output_names"] = names


def example_inputs_for_program(ep: ExportedProgram) -> Any:
    """The example inputs stored in an ExportedProgram, as (args) or {kwargs}."""
    stored = getattr(ep, "example_inputs", None)
    if not stored:
        raise FrontendError("the exported program carries no example inputs; pass them explicitly")
    args, kwargs = stored
    return dict(kwargs) if kwargs and not args else tuple(args)
