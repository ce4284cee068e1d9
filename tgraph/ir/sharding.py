"""How a sharded initializer is cut from the full one, for every rank.

The ``shard`` pass builds one rank's graph; each initializer it cuts carries a
:class:`ShardSpec` in ``value.meta["shard"]`` that says how to cut the same initializer
for ANY rank from the full array. ``cm.save`` uses it to write every rank's weight file
from one compile, and the dump prints it next to the initializer.

A spec keeps, per rank, the ``(start, stop)`` pieces of the full array along ``axis``
(concatenated in order) and zero-pads to ``size`` along that axis, so every rank's array
has the same shape and the ranks share one graph:

    col / row   a column- or row-parallel linear's weight (pieces: the rank's features)
    vocab       the rank's rows of an embedding table or LM head (the last one padded)
    rank0       a row-parallel bias: rank 0 holds it, the others zeros (added once)
    slice       any other constant inside a block, cut along the split (a mask per head)
    offset      a scalar per rank (the first vocab row of the rank), ``values[rank]``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("col", "row", "vocab", "rank0", "slice", "offset")


@dataclass(frozen=True)
class ShardSpec:
    """How to cut one initializer for each of ``world`` ranks (see the module docstring)."""

    kind: str
    source: str  # the full initializer's name ("" for an offset)
    axis: int
    size: int  # every rank's length along ``axis``
    pieces: tuple[tuple[tuple[int, int], ...], ...]  # per rank: (start, stop) ranges
    values: tuple[int, ...] = ()  # per rank, for kind "offset"

    @property
    def world(self) -> int:
        return len(self.values) if self.kind == "offset" else len(self.pieces)

    def take(self, full: np.ndarray | None, rank: int, dtype: Any = np.int64) -> np.ndarray:
        """Rank ``rank``'s array, a new contiguous copy (never a view of ``full``)."""
        if self.kind == "offset":
            return np.asarray(self.values[rank], dtype=dtype)
        parts = [np.take(full, np.arange(a, b), axis=self.axis) for a, b in self.pieces[rank]]
        have = sum(b - a for a, b in self.pieces[rank])
        if have < self.size:
            shape = list(full.shape)
            shape[self.axis] = self.size - have
            parts.append(np.zeros(shape, full.dtype))
        out = np.ascontiguousarray(np.concatenate(parts, axis=self.axis))
        out.setflags(write=False)
        return out

    def to_meta(self) -> dict[str, Any]:
        """A plain form for ``Value.meta`` (serializable, printable)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "axis": self.axis,
            "size": self.size,
            "pieces": [[list(p) for p in rank] for rank in self.pieces],
            "values": list(self.values),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ShardSpec:
        pieces = tuple(tuple((int(a), int(b)) for a, b in rank) for rank in meta["pieces"])
        return cls(
            meta["kind"], meta["source"], int(meta["axis"]), int(meta["size"]), pieces,
            tuple(int(v) for v in meta.get("values", ())),
        )  # fmt: skip

    def describe(self) -> str:
        """One line for the dump: ``row 1/2 of @w along 1`` style, rank independent."""
        if self.kind == "offset":
            return f"shard offset per rank {list(self.values)}"
        return f"shard {self.kind} of @{self.source} axis {self.axis}, {self.size} per rank"


def spec_of(value: Any) -> ShardSpec | None:
    """The ShardSpec of an initializer, or None when it is replicated."""
    meta = value.meta.get("shard")
    return None if meta is None else ShardSpec.from_meta(meta)


def ranges(indices: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Sorted indices as maximal ``(start, stop)`` runs: [0,1,2,5,6] -> ((0,3),(5,7))."""
    out: list[tuple[int, int]] = []
    for i in (int(x) for x in indices):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return tuple(out)
