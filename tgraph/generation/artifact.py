"""A Generator in an artifact directory: the plain forward's files (tgraph/artifact.py)
plus ``step-graph.json`` and ``step-weights.safetensors``.

The step graph's constants that the plain graph holds too (same name, same values: the
model's weights) are written once, in ``weights.safetensors``; the step file holds only
the constants its own passes made (a merged QKV weight, for example). The manifest's
``generation`` entry records the model facts generate needs (vocabulary, maximum length,
EOS and pad ids) and which constants are shared.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np

from tgraph.artifact import ArtifactError
from tgraph.ir.serialize import from_json, to_json

if TYPE_CHECKING:
    from tgraph.api import CompiledModel

    from .generator import Generator

STEP_GRAPH = "step-graph.json"
STEP_WEIGHTS = "step-weights.safetensors"


def write_step(gen: Generator, tmp: str) -> dict[str, Any]:
    """Write the step graph's files into ``tmp``; returns the manifest's ``generation`` entry."""
    import safetensors.torch

    from tgraph.tensors import to_torch

    if gen.step is None:
        return {}
    restore = getattr(gen.step.runner, "restore_constants", None)
    if restore is not None:  # torch: weights held only packed get their arrays back
        restore()
    doc, arrays = to_json(gen.step.graph)
    plain = gen.graph.initializers
    shared = sorted(k for k, a in arrays.items() if k in plain and _same(plain[k].const, a))
    own = {k: to_torch(np.ascontiguousarray(a)).clone() for k, a in arrays.items()
           if k not in set(shared)}  # fmt: skip
    safetensors.torch.save_file(own, os.path.join(tmp, STEP_WEIGHTS))
    _copy_tokenizer(getattr(gen, "tokenizer_dir", None), tmp)
    with open(os.path.join(tmp, STEP_GRAPH), "w") as f:
        json.dump(doc, f)
    entry = {"info": gen.step.info, "shared": shared}
    if gen.plain_from_step:  # graph.json is the step graph itself: calls run the step
        entry["plain"] = "step"
    return {"generation": entry}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")  # fmt: skip


def _copy_tokenizer(source: str | None, tmp: str) -> None:
    """The tokenizer files of the model directory compiled from, so ``tgraph generate
    ARTIFACT --prompt`` finds them."""
    if not source:
        return
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and (a is b or np.array_equal(a, b))


def load_generator(cm: CompiledModel, directory: str, entry: dict[str, Any],
                   plain: dict[str, np.ndarray]) -> Generator:  # fmt: skip
    """The Generator of an artifact whose plain forward ``cm`` is already loaded."""
    import safetensors.torch

    from tgraph.tensors import to_numpy

    from .compile import lower_step
    from .generator import Generator

    try:
        with open(os.path.join(directory, STEP_GRAPH)) as f:
            doc = json.load(f)
        own = safetensors.torch.load_file(os.path.join(directory, STEP_WEIGHTS))
    except (OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{directory}: damaged generation step ({e})") from None
    arrays = {k: to_numpy(t) for k, t in own.items()}
    missing = [k for k in entry["shared"] if k not in plain]
    if missing:
        raise ArtifactError(f"{directory}: weights.safetensors lacks step constant {missing[0]}")
    arrays.update({k: plain[k] for k in entry["shared"]})
    graph = from_json(doc, arrays)
    if "logits_at" not in {v.name for v in graph.inputs}:
        raise ArtifactError(f"{directory}: a generation step of an older tgraph (no logits_at "
                            "input); compile the model again")  # fmt: skip
    graph.meta["generation"] = entry["info"]
    plain = None if entry.get("plain") == "step" else cm
    return Generator(plain, lower_step(graph, cm.backend, cm.device), report=cm.report,
                     pipeline=cm.pipeline)  # fmt: skip
