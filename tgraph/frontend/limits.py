"""Input limits a traced model has but its compiled form would not check.

Eager PyTorch raises on a token id outside an embedding table and on a sequence longer
than a position table; ORT's Gather wraps negative indices and fails deep inside on large
ones, and a too-long sequence surfaces as a broadcast error. The trace records both
limits in ``graph.meta`` and :func:`check_limits` enforces them at the call boundary:

- ``index_ranges``: ``{input name: [0, rows)}`` for integer inputs whose values index a
  constant table (through relayouts and integer casts), found on the traced graph;
- ``dim_limits``: ``{symbol: {"max": n, "source": config field or None, "min": m}}``, the
  bounds torch.export proved for the symbolic dims (each key only where there is a bound);
- ``shape_guards``: the other size conditions export's trace relied on (``guards.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tgraph.frontend.guards import failed_guard
from tgraph.ir import DType, Graph, Value

# Ops whose output holds only values of their first input (relayouts and casts).
_VALUE_KEEPING = frozenset({"reshape", "permute", "expand", "slice", "squeeze", "unsqueeze",
                            "cast"})  # fmt: skip

# torch.export's "no upper bound" is a huge int (int_oo); anything above is no limit.
_UNBOUNDED = 2**62


class LimitError(ValueError):
    """An input is outside what the model can take; the message names it and the limit."""


def _table_rows(v: Value) -> int | None:
    """The row count of the smallest constant table ``v``'s values index, if any."""
    rows, stack, seen = [], [v], set()
    while stack:
        x = stack.pop()
        if x.name in seen:
            continue
        seen.add(x.name)
        for node, index in x.uses():
            if node.op == "gather" and index == 1 and node.inputs[0].const is not None:
                rows.append(int(node.inputs[0].shape[node.attrs["axis"]]))
            elif node.op in _VALUE_KEEPING and index == 0 and not node.outputs[0].dtype.is_float:
                stack.extend(node.outputs)
    return min(rows) if rows else None


def index_ranges(graph: Graph) -> dict[str, list[int]]:
    """``{input name: [0, rows)}`` for each integer input that indexes a constant table."""
    out = {}
    for v in graph.inputs:
        if v.dtype.is_float or v.dtype is DType.bool:
            continue
        rows = _table_rows(v)
        if rows is not None:
            out[v.name] = [0, rows]
    return out


def dim_limits(
    range_constraints: Mapping[Any, Any], names: Mapping[Any, str],
    config_fields: Sequence[tuple[str, Any]], no_floor_below: int = 2,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The bounds export proved, by symbol name: a finite upper bound ``max`` with the config
    field that sets it (a position table bounds ``seq`` by ``max_position_embeddings``), and
    a lower bound ``min`` the trace relied on (a model that branches on ``seq > 8`` exports
    the branch taken with ``seq >= 9`` as a range, not as a guard).

    Args:
        range_constraints: ``ExportedProgram.range_constraints`` (sympy symbol -> range).
        names: the IR's name of each sympy symbol.
        config_fields: ``(field, value)`` pairs from the model's config, first wins.
        no_floor_below: lower bounds up to this are no limit: 2 is torch.export's own floor
            for an automatic dim (it specializes sizes 0 and 1; a graph traced at 2 takes 1),
            1 where every dim was given as a ``Dim`` of minimum 0.
    """
    sources: dict[int, str] = {}
    for field, value in config_fields:
        if isinstance(value, int) and not isinstance(value, bool):
            sources.setdefault(value, field)
    out = {}
    for sym, bounds in range_constraints.items():
        if sym not in names:
            continue
        upper, lower = bounds.upper, bounds.lower
        limit: dict[str, Any] = {}
        # int_oo (no bound) is not an Integer; a huge int is no bound either
        if getattr(upper, "is_Integer", False) and int(upper) < _UNBOUNDED:
            limit.update(max=int(upper), source=sources.get(int(upper)))
        if getattr(lower, "is_Integer", False) and int(lower) > no_floor_below:
            limit["min"] = int(lower)
        if limit:
            out[names[sym]] = limit
    return out


_DIM_WORDS = {"seq": "sequence length", "batch": "batch size"}


def check_limits(graph: Graph, tensors: Sequence[Any], bindings: Mapping[str, int]) -> None:
    """Raise :class:`LimitError` for an index out of its table, a dim over its bound or
    sizes that break a guard of the trace.

    ``tensors`` are the call's inputs in graph order (anything with ``min()``/``max()``);
    ``bindings`` the symbol values they bind.
    """
    for name, limit in (graph.meta.get("dim_limits") or {}).items():
        value = bindings.get(name)
        what = _DIM_WORDS.get(name, f"dim {name}")
        if value is not None and value > limit.get("max", value):
            source = f" ({limit['source']})" if limit["source"] else ""
            raise LimitError(f"{what} {value} exceeds the model's maximum {limit['max']}{source}")
        if value is not None and value < limit.get("min", value):
            raise LimitError(
                f"{what} {value} is below {limit['min']}, the least the traced graph assumes "
                "(the model may branch on sizes): compile with example inputs of this size"
            )
    broken = failed_guard(graph, bindings)
    if broken is not None:
        sizes = ", ".join(f"{k}={v}" for k, v in sorted(bindings.items()))
        traced = ", ".join(
            f"{k}={v}" for k, v in sorted((graph.meta.get("example_sizes") or {}).items())
        )
        raise LimitError(
            f"input sizes {sizes} break '{broken}', which the traced graph assumes (traced at "
            f"{traced or 'other sizes'}; the model may branch on sizes): compile with example "
            "inputs of these sizes"
        )
    ranges = graph.meta.get("index_ranges") or {}
    for v, t in zip(graph.inputs, tensors):
        if v.name not in ranges or t.numel() == 0:
            continue
        lo, hi = ranges[v.name]
        for value in (int(t.min()), int(t.max())):
            if not lo <= value < hi:
                raise LimitError(f"{v.name}: value {value} outside [{lo}, {hi})")
