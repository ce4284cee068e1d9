"""Saving and loading compiled models (``cm.save(dir)``, ``tgraph.load(dir)``).

An artifact directory holds ``manifest.json`` (format version, backend, device,
pipeline, tgraph version, input/output spec), ``graph.json`` (the optimized IR),
``weights.safetensors`` (its constants) and, for the ORT backend, ``model.onnx`` for
inspection. Nothing is pickled: loading never executes code from the artifact, and it
needs no model class. Saving is atomic: everything is written to a temporary directory
beside the target and renamed into place, so a failure leaves an earlier artifact intact.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.utils._pytree as pytree

from tgraph.ir import Graph
from tgraph.ir.serialize import decode, encode, from_json, to_json

if TYPE_CHECKING:
    from tgraph.api import CompiledModel

FORMAT = "tgraph-artifact"
VERSION = 1


class ArtifactError(ValueError):
    """A directory is not a readable tgraph artifact."""


# graph.meta entries that are plain JSON (see tgraph.frontend.trace and .defaults).
_PLAIN_KEYS = (
    "signature", "traced_names", "n_args", "input_names", "output_names", "input_index",
    "input_defaults", "example_sizes", "index_ranges", "dim_limits", "shape_guards",
)  # fmt: skip


def _structure(graph: Graph, directory: str) -> dict[str, Any]:
    """How calls map onto graph inputs and outputs back onto the model's structure.

    Raises ArtifactError when the input or output structure cannot be written: a loaded
    model that answered with flat outputs instead would silently change its interface.
    """
    meta = graph.meta
    out: dict[str, Any] = {}
    for key in _PLAIN_KEYS:
        if key in meta:
            out[key] = meta[key]
    out["output_leaves"] = encode([list(x) for x in meta.get("output_leaves", [])])
    for key in ("in_spec", "out_spec"):
        spec = meta.get(key)
        if spec is None:
            continue
        try:
            out[key] = pytree.treespec_dumps(spec)
        except Exception as e:  # noqa: BLE001 - pytree raises several kinds for this
            what = "inputs" if key == "in_spec" else "outputs"
            raise ArtifactError(
                f"{directory}: cannot save the structure of the model's {what} "
                f"({_first_line(e)}); return tensors, tuples, dicts or a ModelOutput, or "
                "register the container with a serialized_type_name"
            ) from None
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _restore_structure(graph: Graph, structure: dict[str, Any], directory: str) -> None:
    for key in _PLAIN_KEYS:
        if key in structure:
            graph.meta[key] = structure[key]
    graph.meta["output_leaves"] = [tuple(x) for x in decode(structure.get("output_leaves", []))]
    for key in ("in_spec", "out_spec"):
        text = structure.get(key)
        graph.meta[key] = _load_spec(text, directory) if text else None


def _load_spec(text: str, directory: str) -> Any:
    """A pytree spec; containers from libraries (ModelOutput) need their module imported.

    Raises ArtifactError naming the container types when the spec cannot be rebuilt.
    """
    names = _type_names(json.loads(text))
    for type_name in names:
        module = type_name.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    try:
        return pytree.treespec_loads(text)
    except Exception as e:  # noqa: BLE001 - pytree raises several kinds for this
        types = ", ".join(sorted(set(names))) or "a container"
        raise ArtifactError(
            f"{directory}: cannot rebuild the model's input/output structure ({types}: "
            f"{_first_line(e)}); install the package that defines it"
        ) from None


def _type_names(doc: Any) -> list[str]:
    names = []
    if isinstance(doc, dict):
        if isinstance(doc.get("type"), str) and "." in doc["type"]:
            names.append(doc["type"])
        for v in doc.values():
            names.extend(_type_names(v))
    elif isinstance(doc, list):
        for v in doc:
            names.extend(_type_names(v))
    return names


def save(cm: CompiledModel, directory: str | os.PathLike[str]) -> None:
    """Write ``cm`` to ``directory`` atomically (see the module docstring)."""
    import safetensors.torch

    from tgraph import __version__
    from tgraph.tensors import to_torch

    directory = os.fspath(directory)
    parent = os.path.dirname(os.path.abspath(directory)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tgraph-save-", dir=parent)
    try:
        doc, arrays = to_json(cm.graph)
        with open(os.path.join(tmp, "graph.json"), "w") as f:
            json.dump(doc, f)
        files = {"weights.safetensors": arrays}
        if cm.sharding is not None:
            from tgraph.sharded import weight_files

            files = weight_files(cm.graph, cm.sharding, arrays)
        for name, part in files.items():
            tensors = {k: to_torch(np.ascontiguousarray(a)).clone() for k, a in part.items()}
            safetensors.torch.save_file(tensors, os.path.join(tmp, name))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "tgraph_version": __version__,
            "backend": cm.backend,
            "device": cm.device,
            "pipeline": cm.pipeline,
            "inputs": [{"name": v.name, "type": str(v.type)} for v in cm.graph.inputs],
            "outputs": [{"name": v.name, "type": str(v.type)} for v in cm.graph.outputs],
            "structure": _structure(cm.graph, directory),
            "world_size": cm.sharding.world if cm.sharding else 1,
        }
        _save_backend_files(cm, tmp)
        extra = getattr(cm, "save_extra", None)  # a Generator adds its step graph
        if extra is not None:
            manifest.update(extra(tmp))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        _swap_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_backend_files(cm: CompiledModel, tmp: str) -> None:
    from tgraph.backends import get_backend

    backend = get_backend(cm.backend)
    if hasattr(backend, "save_files"):
        backend.save_files(cm.graph, tmp, cm.device)


def _swap_into_place(tmp: str, directory: str) -> None:
    """Replace ``directory`` with ``tmp``; an existing artifact is only removed after."""
    if not os.path.exists(directory):
        os.rename(tmp, directory)
        return
    if os.path.isdir(directory) and not os.path.exists(os.path.join(directory, "manifest.json")):
        if os.listdir(directory):
            raise ArtifactError(
                f"{directory}: exists and is not a tgraph artifact; refusing to overwrite it"
            )
    backup = tempfile.mkdtemp(prefix=".tgraph-old-", dir=os.path.dirname(tmp))
    os.rmdir(backup)
    os.rename(directory, backup)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(backup, directory)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    directory = os.fspath(directory)
    path = os.path.join(directory, "manifest.json")
    if not os.path.isdir(directory):
        raise ArtifactError(f"{directory}: not a directory (expected a tgraph artifact)")
    if not os.path.exists(path):
        raise ArtifactError(
            f"{directory}: no manifest.json; not a tgraph artifact (tgraph compile -o DIR writes one)"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a tgraph artifact manifest")
    if manifest.get("version") != VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {manifest.get('version')}, this tgraph reads {VERSION}"
        )
    return manifest


def load(
    directory: str | os.PathLike[str], device: str | None = None, rank: int | None = None
) -> CompiledModel:
    """Load an artifact written by ``CompiledModel.save`` and lower it again for its backend.

    A sharded artifact loads one rank: ``rank``, else the rank torchrun launched; only
    that rank's weight file is read (``tgraph.sharded``).
    """
    import safetensors.torch

    from tgraph.api import CompiledModel
    from tgraph.backends import LazyRunner, get_backend
    from tgraph.sharded import Sharding, rank_files
    from tgraph.tensors import shared_view, to_numpy

    directory = os.fspath(directory)
    manifest = read_manifest(directory)
    files, rank = rank_files(directory, manifest, rank)
    try:
        with open(os.path.join(directory, "graph.json")) as f:
            doc = json.load(f)
        tensors = {}
        for path in files:
            tensors.update(safetensors.torch.load_file(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{directory}: damaged artifact ({e})") from None
    world = int(manifest.get("world_size", 1))
    # A rank holds its weights once: the graph views the loaded tensors and the torch
    # program runs on those very tensors (sharded models are inference only).
    arrays = {k: (shared_view if world > 1 else to_numpy)(t) for k, t in tensors.items()}
    graph = from_json(doc, arrays)
    _restore_structure(graph, manifest.get("structure", {}), directory)
    device = device or manifest["device"]
    params = None
    if world > 1:
        graph.meta["shard"] = {"world": world, "rank": rank}
        params = tensors if manifest["backend"] == "torch" else None
    lower = get_backend(manifest["backend"]).lower
    if "generation" in manifest:  # lowered only if the plain forward runs this graph
        runner = LazyRunner(lower, graph, device)
    else:
        runner = lower(graph, device, params=params)
    cm = CompiledModel(graph, runner, manifest["backend"], device, [], manifest["pipeline"])
    cm.sharding = Sharding(world, rank) if world > 1 else None
    if "generation" in manifest:
        from tgraph.generation.artifact import load_generator

        return load_generator(cm, directory, manifest["generation"], arrays)
    return cm
