"""ONNX Runtime for the generation step: ``cache_attention`` as GroupQueryAttention
(lowered in ``onnx_ops/cache.py``), and a runner that binds each layer's past and present
K/V to ONE buffer.

Lowering. ``cache_attention`` (tgraph/ir/ops/cache.py) is exactly com.microsoft
GroupQueryAttention in its shared-buffer form: past_key/past_value are the caches, BNSH,
with the capacity L on axis 2; ``seqlens_k`` = past_len + q_len - 1 (the index of each
sequence's last token after the step), ``query_seqlens`` = q_len (right-padded query
rows: ORT appends only the real ones, at slots past_len ..), ``total_sequence_length`` = L
(with query_seqlens it is only an upper bound), ``local_window_size`` = window (the
same count as transformers' sliding window: the query and the window - 1 keys before it;
window - 1 fails the Mistral test), ``softcap`` as is. GQA is causal and does all of: the cache write, causality, per-sequence
lengths (our compacted left padding: no mask needed), GQA head sharing, sliding windows.
With rotary tables (passes/fold_cache_rotary.py) GQA also rotates q and k (``do_rotary``;
see onnx_ops/cache.py for the positions it uses and the head sizes it accepts).

GQA's present outputs only equal the op's updated caches when present and past share a
buffer; a plain session run would allocate a present of another length. So the step graph
runs through :class:`StepRunner` only: one ``run_with_iobinding`` per step, every input bound
to its torch tensor's memory and each present output bound to the cache it updates, so a
decode step copies no cache and allocates nothing but the (batch, 1, vocab) logits.

Greedy token. The session has one output the IR step graph does not: ``greedy_token``, the
(batch, positions) int64 ``ArgMax`` of the float32 logits over the vocabulary (the first
index of the maximum, as ``torch.argmax`` and NumPy pick), added to the ONNX model by
:func:`add_greedy_output`. The greedy decode loop reads it instead of an argmax in Python
over logits the step wrote from the other core (the loop's time between two int4 steps of
the 58M Llama 29.3 -> 18.3 us, about 0.5% of a token net of the kernel; docs/generation.md).
A plain forward through the step computes it too, over every row. It is a lowering
detail: the IR graph, its dumps and saved artifacts do not change, and the other backends
pick from the logits.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tgraph.ir import Graph
from tgraph.tensors import torch_dtype


def lower_step(graph: Graph, device: str = "cpu") -> StepRunner:
    """Open the step graph's session (the ort backend's own) behind a :class:`StepRunner`.

    Afterwards the process holds the weights once, in ONNX Runtime: ``graph``'s constants
    stop viewing the model (see :func:`one_weight_copy`), so dropping the model frees it.
    """
    from .ort import lower

    if device != "cpu":
        raise NotImplementedError("generation on the ort backend runs on cpu; use backend='torch'")
    runner = lower(graph, device, edit=add_greedy_output)
    step = StepRunner(graph, runner)
    step.release = one_weight_copy(graph, runner)
    return step


GREEDY_OUTPUT = "greedy_token"


def add_greedy_output(model) -> None:
    """Append ``ArgMax(logits, axis=-1)`` as the model's last output, ``greedy_token``
    (batch, positions) int64, where the logits (the first output) are float32."""
    from onnx import TensorProto, helper

    logits = model.graph.output[0]
    if logits.type.tensor_type.elem_type != TensorProto.FLOAT:
        return  # ORT's CPU ArgMax has no 16-bit float kernel; the loop picks from the logits
    model.graph.node.append(helper.make_node(
        "ArgMax", [logits.name], [GREEDY_OUTPUT], name="greedy_argmax", axis=-1, keepdims=0,
        select_last_index=0,
    ))  # fmt: skip
    dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim][:-1]
    model.graph.output.append(helper.make_tensor_value_info(GREEDY_OUTPUT, TensorProto.INT64,
                                                            dims or None))  # fmt: skip


def one_weight_copy(graph: Graph, runner, background: bool = True) -> threading.Thread | None:
    """Leave ``graph``'s constants (needed only to save, pickle or show the graph) holding
    no second in-memory copy of what the session holds.

    - Arrays ONNX Runtime reads in place: the graph takes the very array the session reads.
    - Arrays it only read at load (``runner.load_only``: weights it prepacked, and on ORT
      1.32 every array, since that build copies what it is given; backends/ort_load.py): written
      to one unlinked temporary file and mapped back read-only; untouched pages of a map
      are not resident, so they cost no memory until ``save`` reads them. Writing 1.2 GB
      can take seconds on a busy disk, so with ``background`` a thread does it and swaps
      the arrays in when done (returned; until then the graph keeps the arrays it had,
      which hold the same values, so a ``save`` meanwhile is still right).
    - Small constants in the ONNX proto that view memory they do not own (the model's
      parameters): copied, so no view keeps the model's storage alive.
    """
    read_in_place = {k: a for k, a in runner.external_arrays().items()
                     if k not in runner.load_only}  # fmt: skip
    spill = {}
    for v in graph.initializers.values():
        if v.name in runner.load_only:
            spill[v.name] = v
        elif v.name in read_in_place and read_in_place[v.name].shape == v.const.shape:
            v.const = read_in_place[v.name]
        elif v.const is not None and not v.const.flags.owndata:
            v.const = np.array(v.const)

    def work() -> None:
        try:
            mapped = _spill({name: v.const for name, v in spill.items()})
        except OSError as e:  # a full disk: keep the arrays (correct, just not released)
            warnings.warn(f"tgraph: could not release the graph's copy of the weights: {e}",
                          stacklevel=1)  # fmt: skip
            return
        for name, v in spill.items():
            v.const = mapped[name]
        runner.release_load_only()

    if not spill or not background:
        work()
        return None
    thread = threading.Thread(target=work, name="tgraph-weight-spill", daemon=True)
    thread.start()
    return thread


def _spill(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` written to one unlinked temporary file, returned as read-only maps of it."""
    if not arrays:
        return {}
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryFile(prefix="tgraph-weights-") as f:
        offsets = {}
        for name, a in arrays.items():
            offsets[name] = f.tell()
            f.write(np.ascontiguousarray(a).data)  # no tobytes() copy
            f.seek((f.tell() + 63) // 64 * 64)  # keep each array 64-byte aligned
        f.flush()
        size = max(f.tell(), 1)
        f.truncate(size)
        whole = np.memmap(f, dtype=np.uint8, mode="r", shape=(size,))  # the map outlives f
    for name, a in arrays.items():
        start = offsets[name]
        out[name] = whole[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    return out


class StepRunner:
    """``runner([ids, past_len, q_len, logits_at, *caches]) -> [logits, *caches]``, the caches
    in place (the inputs after the first ``len(inputs) - len(caches)`` are the caches).
    ``bind_decode`` also serves the session's greedy token output, where it has one."""

    def __init__(self, graph: Graph, runner):
        self.graph = graph
        self.runner = runner  # the OrtRunner: keeps the session and its weights alive
        self.session = runner.session
        self.input_names = runner.input_names
        self.output_names = runner.output_names
        logits = graph.outputs[0]
        self._logits = (torch_dtype(logits.dtype), int(logits.shape[-1]))
        self._n_inputs = len(graph.inputs) - (len(graph.outputs) - 1)  # inputs before the caches
        # each cache input -> the output that is its updated state (written in place)
        self._present = dict(zip(self.input_names[self._n_inputs :], self.output_names[1:]))
        self.greedy = GREEDY_OUTPUT in self.output_names  # see add_greedy_output
        self._binding = self.session.io_binding()
        self.release: threading.Thread | None = None  # see one_weight_copy
        self._bound: dict[str, tuple] = {}  # input name -> (data_ptr, shape) bound now
        self._epoch = 0  # counts bindings of the logits output (see bind_decode)

    def wait_released(self) -> None:
        """Return once the graph's second copy of the weights is released (one_weight_copy)."""
        if self.release is not None:
            self.release.join()

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        inputs = [t if t.is_contiguous() else t.contiguous() for t in inputs]
        logits, _ = self._bind_all(inputs)
        self.session.run_with_iobinding(self._binding)
        return [logits, *inputs[self._n_inputs :]]

    def bind_decode(self, inputs: Sequence[torch.Tensor]
                    ) -> tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(step, logits, greedy): the step on ``inputs`` (contiguous), bound once, as a call
        with no arguments; the (B, P, V) logits buffer it fills; and the (B, P) int64 buffer
        of the logits' argmax it fills (None when the session has no greedy output).

        The caller writes the small inputs in place between calls. Each call runs the step
        and returns the logits buffer; the next call overwrites both buffers. It serves the
        token loop (tgraph/generation/loop.py): what Python does between two steps runs on
        caches the step has just flushed with the weights, so each object it touches costs
        about 10x its warm time (58M Llama: 300 us between steps, against 29 us with the
        session stubbed out), and the loop should touch as few as it can.
        """
        dtype, vocab = self._logits
        rows = inputs[self._n_inputs - 1].shape  # (B, P)
        logits = torch.empty(*rows, vocab, dtype=dtype)
        greedy = torch.empty(*rows, dtype=torch.long) if self.greedy else None
        binding, run = self._binding, self.session.run_with_iobinding
        epoch = -1  # bound at the first call (the prefill between would undo it)

        def step() -> torch.Tensor:
            nonlocal epoch
            if self._epoch != epoch:  # first call, or the runner ran other buffers meanwhile
                self._bind_all(inputs, logits, greedy)
                epoch = self._epoch
            run(binding)
            return logits

        return step, logits, greedy

    def _bind_all(self, inputs: Sequence[torch.Tensor], logits: torch.Tensor | None = None,
                  greedy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """Bind ``inputs`` and the logits and greedy-token buffers (new ones unless given);
        return the two buffers (greedy None without that output)."""
        n = self._n_inputs
        rows = inputs[n - 1].shape  # (B, P)
        if logits is None:
            dtype, vocab = self._logits
            logits = torch.empty(*rows, vocab, dtype=dtype)  # (B, P, V)
        if greedy is None and self.greedy:
            greedy = torch.empty(*rows, dtype=torch.long)
        binding = self._binding
        # Bind an input only when its buffer changed: a generate call's caches, and the
        # decode loop's inputs (written in place), are bound once.
        for name, t in zip(self.input_names, inputs):
            key = (t.data_ptr(), tuple(t.shape))
            if self._bound.get(name) != key:
                _bind(binding.bind_input, name, t)
                self._bound[name] = key
                if name in self._present:  # present == past: one buffer
                    _bind(binding.bind_output, self._present[name], t)
        _bind(binding.bind_output, self.output_names[0], logits)
        if greedy is not None:
            _bind(binding.bind_output, GREEDY_OUTPUT, greedy)
        self._epoch += 1
        return logits, greedy


def _bind(bind, name: str, t: torch.Tensor) -> None:
    bind(name, "cpu", 0, _NUMPY[t.dtype], tuple(t.shape), t.data_ptr())


_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
          torch.int32: np.int32}  # fmt: skip
