"""The plain forward of a :class:`~tgraph.generation.generator.Generator`, on its step graph.

``gen(input_ids, attention_mask=None)`` is one prefill-shaped step over a fresh cache as
long as the prompt, with the LM head on every row (``logits_at`` = 0 .. seq - 1), so the
plain forward needs no graph, session or weights of its own. Left-padded rows are
compacted as in ``generate`` (a token's position counts the real tokens before it, like
``generate``'s ``cumsum(mask) - 1``); their padding positions get zero logits. The result is
the model's own output class with ``logits`` (batch, seq, vocab).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tgraph.api import InputError, name_inputs

if TYPE_CHECKING:
    from .generator import Generator

_NAMES = ("input_ids", "attention_mask")
_IGNORED = {"use_cache": False, "return_dict": True}  # accepted at these values only


def step_forward(gen: Generator, *args: Any, **kwargs: Any) -> Any:
    """``gen``'s plain forward (see the module docstring)."""
    from .generator import GenerationError, _prompt, compact

    named = _named(args, kwargs)
    try:
        ids, mask = _prompt(named.get("input_ids"), named.get("attention_mask"),
                            gen.step.info["vocab_size"])  # fmt: skip
    except GenerationError as e:
        raise InputError(str(e)) from None
    batch, seq = ids.shape
    lens = mask.sum(dim=1)
    caches = gen.step.new_caches(batch, seq, gen.device)
    width = int(lens.max())
    rows = torch.arange(width).expand(batch, width).contiguous()
    zeros = torch.zeros_like(lens)
    logits = gen._run(compact(ids, mask, lens), zeros, lens, caches, logits_at=rows)
    # Back to the caller's positions: row b's j-th real token sits at its j-th mask one.
    out = logits.new_zeros(batch, seq, logits.shape[-1])
    real = mask.bool()
    keep = torch.arange(width)[None, :] < lens[:, None]
    out[real] = logits[keep]
    return _output(gen.step.info.get("output_class"), out)


def _named(args: tuple, kwargs: dict) -> dict[str, Any]:
    named = name_inputs(_NAMES, args, kwargs)
    for key, value in list(named.items()):
        if key in _IGNORED and value in (None, _IGNORED[key]):
            del named[key]
        elif key not in _NAMES:
            raise InputError(
                f"input {key!r}: the compiled causal LM's forward takes input_ids and "
                "attention_mask (compile with verify=True for the model's full forward)"
            )
    if named.get("input_ids") is None:
        raise InputError("inputs missing ['input_ids']")
    return named


def _output(path: str | None, logits: Tensor) -> Any:
    """The model's output class (``module:qualname``) holding ``logits``; a dict when that
    class cannot be imported."""
    if path:
        module, _, name = path.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
            return cls(logits=logits)
        except (ImportError, AttributeError, TypeError):
            pass
    return {"logits": logits}
