"""The two registries: passes (``@register``) and named pipelines (``register_pipeline``).

A pass is one rewrite with a report record of its own; a pipeline is a name for a list
of passes (``default``, ``bf16``, ``none``) that expands in place when parsed. They share
one name space, so a pipeline entry is never ambiguous, but are listed apart:
:func:`list_passes` and :func:`list_pipelines`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tgraph.passes.manager import Pass


class PipelineError(ValueError):
    """A pipeline string names an unknown pass or has a malformed option."""


_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, tuple[str, str]] = {}  # name -> (pipeline text, description)


def register(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: register a pass under a kebab-case name."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name):
        raise ValueError(f"pass name {name!r} is not kebab-case")

    def deco(cls: type[Pass]) -> type[Pass]:
        if name in _PASSES or name in _PIPELINES:
            raise ValueError(f"pass {name!r} is registered twice")
        cls.name = name
        _PASSES[name] = cls
        return cls

    return deco


def register_pipeline(name: str, text: str, description: str) -> None:
    """Register a named pipeline (``default``, ``training``, ...) that expands to ``text``."""
    if name in _PASSES or name in _PIPELINES:
        raise ValueError(f"pipeline {name!r} is registered twice")
    _PIPELINES[name] = (text, description)


def _load() -> None:
    import tgraph.passes  # noqa: F401  (registers every pass and named pipeline)


def list_passes() -> dict[str, str]:
    """Every registered pass with its one-line description; lossy ones say so first."""
    _load()
    out = {}
    for name, cls in sorted(_PASSES.items()):
        out[name] = f"(lossy) {cls.description()}" if cls.lossy else cls.description()
    return out


def lossy_passes() -> list[str]:
    """The registered passes that change outputs by design (compression), sorted."""
    _load()
    return sorted(name for name, cls in _PASSES.items() if cls.lossy)


def list_pipelines() -> dict[str, dict[str, Any]]:
    """Every named pipeline: ``{name: {"description": ..., "passes": "a,b,..."}}``."""
    _load()
    return {name: {"description": desc, "passes": text}
            for name, (text, desc) in sorted(_PIPELINES.items())}  # fmt: skip


def is_pass(name: str) -> bool:
    _load()
    return name in _PASSES


def pipeline_text(name: str) -> str | None:
    """The passes a named pipeline expands to, or None when ``name`` names none."""
    _load()
    entry = _PIPELINES.get(name)
    return entry[0] if entry else None


def get_pass(name: str) -> type[Pass]:
    _load()
    if name not in _PASSES:
        raise PipelineError(unknown_name(name))
    return _PASSES[name]


def unknown_name(name: str) -> str:
    """The error text for an unknown entry, with close matches among passes and pipelines."""
    known = sorted(_PASSES) + sorted(_PIPELINES)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return f"unknown pass {name!r}{hint}"
