"""Saving and loading zoo models as self-describing ``.pt`` checkpoints.

A checkpoint is a ``torch.save`` of a plain dict::

    {"format": "tgraph-zoo", "version": 1, "family": "gpt",
     "config": {...dataclasses.asdict(config)...}, "state_dict": {name: tensor}}

Loading never unpickles code (``weights_only=True``), rebuilds the model from family and config,
and checks every key and shape before ``load_state_dict``, so a mismatch is reported as one line
naming the file and the key instead of a long PyTorch traceback.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .zoo import FAMILIES

FORMAT = "tgraph-zoo"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line naming the file."""


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Writes ``model`` to ``path`` atomically.

    The file is written to a temporary name in the same directory and moved into place with
    ``os.replace``, so a crash never leaves a half-written checkpoint under ``path``.

    Args:
        model: A zoo model: it must carry ``family`` (a key of ``FAMILIES``) and ``config``.
        path: Destination file, conventionally ending in ``.pt``.

    Raises:
        TypeError: ``model`` does not carry a zoo family and config.
    """
    family = getattr(model, "family", None)
    config = getattr(model, "config", None)
    if family not in FAMILIES or not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(model).__name__} is not a zoo model (no 'family'/'config')")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "family": family,
        "config": dataclasses.asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuilds a zoo model from a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The checkpoint file.

    Returns:
        The model, on CPU, in eval mode.

    Raises:
        CheckpointError: The file is missing, unreadable, corrupt, not a tgraph zoo checkpoint,
            needs code to unpickle, names an unknown family or config field, or its weights do
            not match the config (missing, unexpected or wrong-shape key).
    """
    path = Path(path)
    payload = _read(path)
    family, config = _parse_header(path, payload)
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: 'state_dict' is not a dict of tensors")
    model = FAMILIES[family][1](config)
    _check_state_dict(path, model.state_dict(), state_dict)
    model.load_state_dict(state_dict)
    return model.eval()


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            payload = _torch_load(path, f)  # raises only CheckpointError
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open: {e.strerror or e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a tgraph zoo checkpoint (no format={FORMAT!r} header); "
            "write one with tgraph.models.save_checkpoint"
        )
    return payload


def _torch_load(path: Path, f: BinaryIO) -> Any:
    try:
        with warnings.catch_warnings():
            # Harmless notice about pickle protocols that the weights-only unpickler prints.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(f, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from e
    except Exception as e:  # bad bytes raise RuntimeError, EOFError, OSError, KeyError, ...
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {_first_line(e)})"
        ) from e


def _unpickling_error(path: Path, e: pickle.UnpicklingError) -> CheckpointError:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found:
        return CheckpointError(
            f"{path}: refused to load: unpickling it would call {found.group(1)}, and only "
            "tensors and plain containers are allowed (weights_only=True); save weights with "
            "tgraph.models.save_checkpoint or as safetensors"
        )
    detail = re.search(r"Unsupported operand \d+", str(e))
    reason = detail.group(0) if detail else _first_line(e)
    return CheckpointError(
        f"{path}: corrupt or not a torch.save checkpoint (weights-only unpickler: {reason})"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def _parse_header(path: Path, payload: dict[str, Any]) -> tuple[str, Any]:
    version = payload.get("version")
    if version != VERSION:
        raise CheckpointError(f"{path}: format version {version!r}, this tgraph reads {VERSION}")
    family = payload.get("family")
    if family not in FAMILIES:
        raise CheckpointError(
            f"{path}: unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}"
        )
    config_cls = FAMILIES[family][0]
    fields = payload.get("config")
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: 'config' is not a dict")
    known = {f.name for f in dataclasses.fields(config_cls)}
    for name in fields:
        if name not in known:
            raise CheckpointError(
                f"{path}: config field {name!r} is not a {config_cls.__name__} field"
            )
    try:
        config = config_cls(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid {family} config: {e}") from e
    return family, config


def _check_state_dict(path: Path, expected: dict[str, torch.Tensor], found: dict[str, Any]) -> None:
    """Raises on the first key that is missing, unexpected, not a tensor or the wrong shape."""
    problems = []
    for key, want in expected.items():
        if key not in found:
            problems.append(f"key {key!r} is missing (config wants shape {_shape(want)})")
        elif not isinstance(found[key], torch.Tensor):
            problems.append(f"key {key!r} holds a {type(found[key]).__name__}, not a tensor")
        elif found[key].shape != want.shape:
            problems.append(
                f"key {key!r} has shape {_shape(found[key])}, config wants {_shape(want)}"
            )
    problems += [f"unexpected key {key!r}" for key in found if key not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path}: {problems[0]}{more}")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + (",)" if t.dim() == 1 else ")")
