"""Open a CHECKPOINT argument: ``zoo:NAME``, a zoo ``.pt``, a ``.pt2`` program, or a
Hugging Face model directory. Nothing here executes code from the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch


class CheckpointLoadError(ValueError):
    """A checkpoint could not be opened; the message names the file and what to do."""


@dataclass
class LoadedModel:
    """A model ready to trace: the module (or exported program) and example inputs."""

    name: str
    model: Any  # nn.Module or torch.export.ExportedProgram
    example_inputs: Any  # dict of kwargs or tuple of args


def load_model(spec: str, batch: int = 2, seq: int = 16) -> LoadedModel:
    """Open ``spec`` and build example inputs of the given batch and sequence size."""
    if spec.startswith("zoo:"):
        return _load_zoo(spec[4:], batch, seq)
    if not os.path.exists(spec):
        raise CheckpointLoadError(f"{spec}: no such file or directory")
    if os.path.isdir(spec):
        return _load_hf_dir(spec, batch, seq)
    if spec.endswith(".pt2"):
        return _load_pt2(spec)
    if spec.endswith((".pt", ".pth")):
        return _load_zoo_checkpoint(spec, batch, seq)
    raise CheckpointLoadError(
        f"{spec}: unknown checkpoint kind; expected zoo:NAME, a .pt zoo checkpoint, "
        "a .pt2 exported program or a Hugging Face model directory"
    )


def _load_zoo(name: str, batch: int, seq: int) -> LoadedModel:
    from tgraph.models import build, example_inputs
    from tgraph.models.zoo import UnknownModelError

    try:
        model = build(name)
    except UnknownModelError as e:
        raise CheckpointLoadError(str(e).strip("'\"")) from None
    return LoadedModel(f"zoo:{name}", model, example_inputs(model, batch=batch, seq=seq))


def _load_zoo_checkpoint(path: str, batch: int, seq: int) -> LoadedModel:
    from tgraph.models import CheckpointError, example_inputs, load_checkpoint

    try:
        model = load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointLoadError(str(e)) from None
    return LoadedModel(path, model, example_inputs(model, batch=batch, seq=seq))


def _load_pt2(path: str) -> LoadedModel:
    from tgraph.frontend.trace import example_inputs_for_program

    # torch.export.load logs a traceback for a corrupt file before raising.
    with _quiet_logger("torch.export"), contextlib.redirect_stderr(io.StringIO()):
        try:
            ep = torch.export.load(path)
        except Exception as e:  # noqa: BLE001 - any failure means a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointLoadError(
                f"{path}: not a readable torch.export program ({first}); re-export it with "
                "torch.export.save"
            ) from None
    return LoadedModel(path, ep, example_inputs_for_program(ep))


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_hf_dir(path: str, batch: int, seq: int) -> LoadedModel:
    raise CheckpointLoadError(
        f"{path}: Hugging Face model directories are not supported yet; "
        "use zoo:NAME, a .pt zoo checkpoint or a .pt2 program"
    )
