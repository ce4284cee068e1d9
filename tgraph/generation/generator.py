"""The compiled causal LM: the plain forward of :class:`CompiledModel` plus ``generate``.

``generate`` keeps one preallocated K and V buffer per layer, sized to the longest prompt
plus the new tokens, and calls the lowered step graph (tgraph/generation/capture.py) once
for the prompt (prefill) and once per new token (decode). Left-padded prompts are compacted
first: each sequence's real tokens go to the front, so a token's cache slot is its position
and the cache holds no padding (the layout of ONNX Runtime's GroupQueryAttention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tgraph.api import CompiledModel
from tgraph.ir import Graph

from .loop import token_loop
from .sampling import Sampling


class GenerationError(ValueError):
    """A generate call the compiled model cannot serve (the message says what to change)."""


@dataclass
class Timings:
    """Wall-clock seconds of the last ``generate`` call (``gen.last_timings``).

    ``prefill_s`` covers the prompt's step and the choice of the first new token;
    ``decode_s[i]`` the step that made new token i + 1 (one per token after the first).
    """

    batch: int
    prompt_len: int
    prefill_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return len(self.decode_s) + 1

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second over all sequences in the decode steps (0 without any)."""
        total = sum(self.decode_s)
        return self.batch * len(self.decode_s) / total if total > 0 else 0.0


class StepProgram:
    """The lowered step graph: ``runner([ids, past_len, q_len, logits_at, *caches])
    -> [logits, *caches]`` (tgraph/generation/capture.py)."""

    def __init__(self, graph: Graph, runner: Any, backend: str, device: str):
        self.graph = graph
        self.runner = runner
        self.backend, self.device = backend, device
        self.info: dict[str, Any] = graph.meta["generation"]
        state = graph.inputs[len(graph.inputs) - (len(graph.outputs) - 1) :]  # the caches
        self.caches = [(v.shape[1], v.shape[3], v.dtype) for v in state]

    def new_caches(self, batch: int, length: int, device: str) -> list[Tensor]:
        from tgraph.tensors import torch_dtype

        return [torch.zeros(batch, heads, length, d, dtype=torch_dtype(dt), device=device)
                for heads, d, dt in self.caches]  # fmt: skip


class Generator(CompiledModel):
    """A compiled causal LM: called like the model (its plain forward), plus ``generate``.

    The plain forward runs on the step graph (every row's logits from one prefill-shaped
    step), so the weights exist once and the model is not kept; with ``plain`` (a compiled
    forward, from ``verify``/``accuracy``/``dump_dir``) it runs that graph instead.
    Attributes beyond :class:`CompiledModel`'s: ``step`` (the :class:`StepProgram`, None when
    the step could not be captured; ``step_error`` says why) and ``last_timings``.
    """

    def __init__(self, plain: CompiledModel | None, step: StepProgram | None,
                 step_error: str = "", report: list | None = None, pipeline: str = ""):  # fmt: skip
        if plain is not None:
            super().__init__(plain._graph, plain.runner, plain.backend, plain.device,
                             plain.report, plain.pipeline)  # fmt: skip
            self.accuracy = plain.accuracy
        elif step is not None:
            super().__init__(step.graph, step.runner, step.backend, step.device, report, pipeline)
        else:
            raise ValueError("a Generator needs a plain forward or a step program")
        self.plain_from_step = plain is None
        self.step = step
        self.step_error = step_error
        self.last_timings: Timings | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.plain_from_step:
            return super().forward(*args, **kwargs)
        from .plain import step_forward

        with torch.inference_mode():
            return step_forward(self, *args, **kwargs)

    def extra_repr(self) -> str:
        step = f"{len(self.step.graph.nodes)} step nodes" if self.step else "no step"
        return f"backend={self.backend!r}, device={self.device!r}, {step}"

    def save_extra(self, tmp: str) -> dict[str, Any]:
        """Called by ``save`` (tgraph/artifact.py): write the step graph into ``tmp``."""
        from .artifact import write_step

        return write_step(self, tmp)

    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        streamer: Any = None,
        max_length: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Generate like transformers' ``generate`` for these arguments.

        Returns (batch, prompt + new) int64: the prompt as given, then the new tokens; a
        sequence that produced an EOS id continues with ``pad_token_id``; generation stops
        when every sequence has, or after ``max_new_tokens`` (or at ``max_length`` in all).
        ``streamer.put`` gets the prompt, then each step's (batch,) tokens; ``streamer.end()``
        follows. Sampling draws from ``generator`` (or one seeded with ``seed``).
        ``self.last_timings`` holds the :class:`Timings` of the call.
        """
        ids, mask = self._prompt(input_ids, attention_mask)
        new = new_token_count(max_new_tokens, max_length, ids.shape[1])
        lens, need = self._lengths(mask, new)
        info = self.step.info
        if do_sample and generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        sampling = Sampling(do_sample, temperature, top_k, top_p, generator)
        sampling.check()
        eos = _ids_set(info.get("eos_token_id") if eos_token_id is None else eos_token_id)
        pad = pad_token_id if pad_token_id is not None else info.get("pad_token_id")
        if pad is None:
            pad = min(eos) if eos else 0
        return token_loop(self, ids, mask, lens, new, need, sampling, eos, int(pad), streamer)

    @torch.inference_mode()
    def score(self, input_ids: Tensor, continuation: Tensor, attention_mask: Tensor | None = None
              ) -> Tensor:  # fmt: skip
        """Teacher-forced logits: (batch, n, vocab) for ``continuation`` (batch, n) ids.

        Row i of the result is what the step that follows token i - 1 of ``continuation``
        (row 0: the prompt's prefill) predicts, run through the same cache steps as
        ``generate``.
        """
        ids, mask = self._prompt(input_ids, attention_mask)
        forced = torch.as_tensor(continuation).long()
        lens, need = self._lengths(mask, forced.shape[1])
        caches = self.step.new_caches(ids.shape[0], need, self.device)
        logits = [self._run(compact(ids, mask, lens), torch.zeros_like(lens), lens, caches)]
        for i in range(forced.shape[1] - 1):
            logits.append(self._run(forced[:, i : i + 1], lens + i, torch.ones_like(lens), caches))
        return torch.stack(logits, dim=1)

    def _prompt(self, input_ids: Any, attention_mask: Any) -> tuple[Tensor, Tensor]:
        if self.step is None:
            raise GenerationError(f"this model cannot generate: {self.step_error}")
        return _prompt(input_ids, attention_mask, self.step.info["vocab_size"])

    def _lengths(self, mask: Tensor, new: int) -> tuple[Tensor, int]:
        """Each row's real prompt length, and the cache slots the call needs (checked)."""
        lens = mask.sum(dim=1)
        need = int(lens.max()) + new
        limit = self.step.info["max_length"]
        if need > limit:
            raise GenerationError(
                f"prompt ({int(lens.max())} tokens) + max_new_tokens ({new}) = {need} exceeds the "
                f"model's maximum length {limit}; shorten one of them"
            )
        return lens, need

    def _run(self, ids: Tensor, past_len: Tensor, q_len: Tensor, caches: list[Tensor],
             logits_at: Tensor | None = None) -> Tensor:  # fmt: skip
        """One step; ``caches`` is updated to the step's state outputs. Returns the (B, V)
        logits of each row's last real token, or (B, P, V) at ``logits_at`` (B, P)."""
        device = caches[0].device
        rows = (q_len - 1).clamp(min=0)[:, None] if logits_at is None else logits_at
        outs = self.step.runner([t.to(device) for t in (ids, past_len, q_len, rows)] + caches)
        caches[:] = outs[1:]
        return outs[0][:, -1].cpu() if logits_at is None else outs[0].cpu()


def _prompt(input_ids: Any, attention_mask: Any, vocab: int) -> tuple[Tensor, Tensor]:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype.is_floating_point:
        raise GenerationError(f"input_ids must be integer ids of shape (batch, length), got "
                              f"{ids.dtype} {list(ids.shape)}")  # fmt: skip
    ids = ids.long()
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
    if mask.dim() == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(ids.shape):
        raise GenerationError(f"attention_mask shape {list(mask.shape)} != input_ids "
                              f"{list(ids.shape)}")  # fmt: skip
    mask = (mask != 0).long()
    real = ids[mask.bool()]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab):
        bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
        raise GenerationError(f"input id {bad} is outside the vocabulary (0..{vocab - 1})")
    empty = (mask.sum(dim=1) == 0).nonzero()
    if len(empty):
        raise GenerationError(f"row {int(empty[0])} of attention_mask has no token")
    return ids, mask


def new_token_count(max_new_tokens: int | None, max_length: int | None, prompt_len: int) -> int:
    """How many tokens to generate; GenerationError when that is not a positive count."""
    if max_new_tokens is None:
        if max_length is None:
            raise GenerationError("give max_new_tokens (or max_length)")
        max_new_tokens = max_length - prompt_len
    if int(max_new_tokens) <= 0:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return int(max_new_tokens)


def _ids_set(ids: int | list[int] | None) -> set[int]:
    if ids is None:
        return set()
    return {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}


def compact(ids: Tensor, mask: Tensor, lens: Tensor) -> Tensor:
    """Each row's real tokens moved to its front (right padding with id 0)."""
    order = torch.argsort(1 - mask, dim=1, stable=True)  # real positions first, in order
    packed = torch.gather(ids, 1, order)
    width = int(lens.max())
    keep = torch.arange(width)[None, :] < lens[:, None]
    return torch.where(keep, packed[:, :width], torch.zeros_like(packed[:, :width]))
