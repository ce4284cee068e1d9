"""The peers' model files: a plain ONNX export (shared by ONNX Runtime and OpenVINO) and
the ONNX Runtime sessions and feeds that run it."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch


def flat_inputs(inputs: Any) -> tuple[tuple, dict]:
    """(args, kwargs) of example inputs given as a tensor, a tuple or a dict."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    return tuple(inputs), {}


def tensor_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


def export_onnx(model, inputs, path: str) -> tuple[list[str], str | None]:
    """A plain ONNX export of ``model`` (batch and sequence dims dynamic).

    torch's own exporter (torch.export-based, ``dynamo=True``) first, as a user would run it
    today; the legacy TorchScript exporter when that fails. Returns the input names and,
    when the fallback ran, a note saying so and why (the bench reports it per contender).
    """
    args, kwargs = flat_inputs(inputs)
    kwargs = tensor_kwargs(kwargs)
    tensors = list(args) + list(kwargs.values())
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))]
    # Grad on: nn.TransformerEncoder's inference fast path (one fused ATen op that ONNX
    # cannot express) is taken only without grad.
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1], torch.enable_grad(), warnings.catch_warnings(), _quiet_logs():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, _widen(args), kwargs=_widen(kwargs) or None, dynamo=True, input_names=names,
                dynamic_shapes=_export_dims(model, args, kwargs), verbose=False,
            )  # fmt: skip
            program.save(path)
            return names, None
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the legacy one
            why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        axes = {n: {0: "batch", 1: "seq"} for n, t in zip(names, tensors) if t.dim() >= 2}
        torch.onnx.export(
            model, args, path, kwargs=kwargs or None, input_names=names, dynamic_axes=axes,
            dynamo=False, opset_version=17,
        )  # fmt: skip
    return names, f"exported with the TorchScript exporter (torch.export failed: {why})"


@contextlib.contextmanager
def _quiet_logs():
    """The exporter logs (torchvision missing, ...) through handlers made before the
    redirect; raise its loggers' level for the export instead."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _widen(tree: Any) -> Any:
    """Size-1 batch/sequence dims at size 2: torch.export specializes size-1 dims."""
    import torch.utils._pytree as pytree

    def widen(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        for d in range(min(t.dim(), 2 if t.dim() in (2, 3) else 1)):
            if t.shape[d] == 1:
                t = t.repeat_interleave(2, dim=d)
        return t

    return pytree.tree_map(widen, tree)


def _export_dims(model, args: tuple, kwargs: dict) -> Any:
    """torch.export dynamic shapes: dim 0 is the batch, dim 1 of rank 2-3 inputs the
    sequence (bounded by the config's position table, where it has one)."""
    from torch.export import Dim

    config = getattr(model, "config", None)
    limit = next((getattr(config, f) for f in ("max_position_embeddings", "n_positions",
                  "block_size", "max_seq") if isinstance(getattr(config, f, None), int)), None)  # fmt: skip
    batch, seq = Dim("batch"), Dim("seq", max=limit) if limit else Dim("seq")

    def spec(t: torch.Tensor) -> dict | None:
        if t.dim() == 0:
            return None
        return {0: batch, 1: seq} if t.dim() in (2, 3) else {0: batch}

    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(t) for t in args)


def ort_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def feeds(names: Sequence[str], inputs) -> dict[str, Any]:
    args, kwargs = flat_inputs(inputs)
    tensors = list(args) + list(tensor_kwargs(kwargs).values())
    return {n: t.numpy() for n, t in zip(names, tensors)}


def plain_onnx(model, inputs, tmp: str) -> tuple[str, str | None]:
    """The plain export shared by the ORT and OpenVINO peers, made once per bench in ``tmp``:
    its path and the exporter note of :func:`export_onnx`."""
    path = os.path.join(tmp, "plain.onnx")
    note_path = path + ".note"
    if not os.path.exists(path):
        _, note = export_onnx(model, inputs, path)
        with open(note_path, "w") as f:
            f.write(note or "")
    with open(note_path) as f:
        return path, f.read() or None
