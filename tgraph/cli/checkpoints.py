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
        raise CheckpointLoadError(e.args[0] if e.args else str(e)) from None
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
    """A Hugging Face model directory: config.json plus safetensors or pytorch_model.bin.

    The architecture comes from ``config.architectures`` through transformers' own classes;
    ``trust_remote_code`` is never enabled, and .bin weights are checked with
    ``torch.load(weights_only=True)`` before transformers reads them.
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointLoadError(f"{path}: no config.json; not a Hugging Face model directory")
    config_dict = _read_json(config_path)
    try:
        import transformers
    except ImportError:
        raise CheckpointLoadError(
            f"{path}: Hugging Face directories need transformers: pip install 'tgraph[hf]'"
        ) from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    _check_weights(path)
    archs = config_dict.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise CheckpointLoadError(
            f"{config_path}: architectures={archs!r} names no transformers class; "
            "tgraph never runs remote code"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
        if hasattr(config, "use_cache"):
            config.use_cache = False  # a KV cache in the outputs is not a tensor structure
        model, info = cls.from_pretrained(
            path, config=config, trust_remote_code=False, output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, naming the tensor
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise CheckpointLoadError(
            f"{path}: transformers could not load it ({_first_line(e)})"
        ) from None
    _check_loading_info(_weights_name(path), info)
    return LoadedModel(path, model.eval(), _hf_inputs(config, batch, seq))


def _weights_name(path: str) -> str:
    """The weight file, for messages; the directory when the weights are sharded."""
    files = [f for f in sorted(os.listdir(path)) if f.endswith((".safetensors", ".bin"))]
    return os.path.join(path, files[0]) if len(files) == 1 else path


def _check_loading_info(where: str, info: dict[str, Any], shown: int = 3) -> None:
    """Refuse weights that do not fill the model config.json describes.

    transformers initializes a missing or mis-shaped tensor at random and goes on; a
    compiler that then runs the model would return confident nonsense.
    """
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        key, have, want = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointLoadError(
            f"{where}: tensor {key} has shape {list(have)}, config.json needs {list(want)}"
            f"{more}; the weights and config.json are of different models"
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        names = ", ".join(missing[:shown])
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise CheckpointLoadError(
            f"{where}: {len(missing)} tensors the model needs are missing: {names}{more}; "
            "the weights are incomplete (re-save them with save_pretrained)"
        )


def _read_json(path: str) -> dict[str, Any]:
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise CheckpointLoadError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise CheckpointLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointLoadError(f"{path}: expected a JSON object")
    return data


def _check_weights(path: str) -> None:
    """Open every weight file safely first, so a bad one fails with its own name."""
    files = sorted(os.listdir(path))
    tensors = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(".bin")]
    if not tensors and not pickles:
        raise CheckpointLoadError(f"{path}: no *.safetensors or pytorch_model.bin weights")
    for name in tensors:
        _check_safetensors(os.path.join(path, name))
    if not tensors:
        for name in pickles:
            check_torch_pickle(os.path.join(path, name))


def _check_safetensors(file: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as e:  # noqa: BLE001
        raise CheckpointLoadError(
            f"{file}: corrupt or truncated safetensors ({_first_line(e)})"
        ) from None
    size = os.path.getsize(file)
    import json
    import struct

    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointLoadError(f"{file}: truncated safetensors (data ends past the file)")


def check_torch_pickle(file: str) -> Any:
    """``torch.load(weights_only=True)``; a pickle that wants code is refused, never run."""
    import pickle

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointLoadError(
            f"{file}: refused: the pickle needs more than tensors ({_first_line(e)}); "
            "save the weights as safetensors"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad magic, ...
        raise CheckpointLoadError(
            f"{file}: corrupt or not a torch checkpoint ({_first_line(e)})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _hf_inputs(config: Any, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Example inputs from the config: pixel_values for vision models, else ids and a mask."""
    g = torch.Generator().manual_seed(0)
    if hasattr(config, "image_size") and hasattr(config, "num_channels"):
        size = config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.randn(batch, config.num_channels, *size, generator=g)}
    vocab = getattr(config, "vocab_size", 100)
    return {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }
