"""Capture a Hugging Face causal LM's generation step as one IR graph with explicit KV state.

The step graph is traced from :class:`StepModule`, a wrapper that calls the model's own
forward with

  input_ids (batch, seq)         the new tokens (a right-padded prompt, or one token),
  past_len  (batch,) int64       tokens already in each sequence's cache,
  q_len     (batch,) int64       real tokens among the seq new ones,
  logits_at (batch, positions)   which of the seq rows the LM head reads (int64),
  k_cache_i, v_cache_i           (batch, kv_heads, cache_len, head_dim) per layer,

and returns ``logits`` (batch, positions, vocab) at those rows followed by every updated
cache. ``generate`` asks for each sequence's last real token (positions = 1: the LM head
runs on one row); the plain forward for every row (positions = seq). Position ids are
``past_len + arange(seq)``: a token's position is its cache slot.

How the model's attention becomes one op without per-architecture code: transformers
dispatches attention through ``AttentionInterface`` and the cache through ``cache.update``.
During the trace the model's attention implementation is set to ``tgraph_cache`` (registered
here) and it gets a cache whose ``update`` hands the new keys/values straight through. The
registered function calls the custom op ``tgraph::cache_attention`` on the new q/k/v and
that layer's cache tensors, so the exported program holds exactly one node per layer that
writes the cache and attends over it, which translates to the IR op ``cache_attention``
(tgraph/ir/ops/cache.py). The model's own mask construction is skipped (transformers builds
no mask for an attention implementation it has no mask function for): causality, padding
and sliding windows are the op's semantics, from ``past_len``/``q_len`` and the layer's
``sliding_window``. RoPE, norms and projections stay the model's own ops (the default pipeline's
fold-cache-rotary then moves RoPE into ``cache_attention`` as cos/sin tables by position).

Graph outputs 1.. carry ``meta["updates"]`` = the name of the cache input they replace.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from tgraph.frontend.aten import TRANSLATORS
from tgraph.frontend.export import FrontendError, traceable_experts
from tgraph.ir import Graph

ATTENTION_NAME = "tgraph_cache"
STEP_INPUTS = ("input_ids", "past_len", "q_len", "logits_at")  # then the caches


# -- the custom op ---------------------------------------------------------------------------


@torch.library.custom_op("tgraph::cache_attention", mutates_args=())
def cache_attention_op(
    q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, past_len: Tensor,
    q_len: Tensor, num_heads: int, kv_heads: int, scale: float, window: int, softcap: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Eager semantics of the IR op ``cache_attention``: the torch kernel on copies."""
    from tgraph.backends.torch_cache_ops import cache_attention

    kc, vc = k_cache.clone(), v_cache.clone()
    out, _, _ = cache_attention(q, k, v, kc, vc, past_len, q_len, num_heads=num_heads,
                                kv_heads=kv_heads, scale=scale, window=window, softcap=softcap)  # fmt: skip
    return out, kc, vc


@cache_attention_op.register_fake
def _(q, k, v, k_cache, v_cache, past_len, q_len, num_heads, kv_heads, scale, window, softcap):
    out = q.new_empty((q.shape[0], q.shape[1], num_heads * v_cache.shape[3]))
    return out, torch.empty_like(k_cache), torch.empty_like(v_cache)


def _translate(ctx, q, k, v, kc, vc, past_len, q_len, num_heads, kv_heads, scale, window,
               softcap):  # fmt: skip
    inputs = [ctx.value(x) for x in (q, k, v, kc, vc, past_len, q_len)]
    attrs = dict(num_heads=num_heads, kv_heads=kv_heads, scale=float(scale), window=int(window),
                 softcap=float(softcap))  # fmt: skip
    return tuple(ctx.emit_node("cache_attention", inputs, **attrs).outputs)


TRANSLATORS["tgraph::cache_attention.default"] = _translate


# -- the model-side hooks ----------------------------------------------------------------------


class _StepState:
    """What one traced call threads through the model: cache tensors in, updated ones out."""

    def __init__(self, caches: list[Tensor], past_len: Tensor, q_len: Tensor):
        self.caches = caches
        self.updated: list[Tensor | None] = [None] * len(caches)
        self.past_len = past_len
        self.q_len = q_len
        self.pending: list[int] = []  # layer indices whose cache.update has run

    # the duck-typed transformers Cache the model sees
    is_compileable = True

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *a, **kw):
        self.pending.append(layer_idx)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # Models ask only to default position ids / a padding mask, which the step does not
        # leave to them (it passes position_ids); the true lengths are per row, in past_len.
        return 0


_ACTIVE: list[_StepState] = []


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
               scaling: float | None = None, sliding_window: int | None = None,
               softcap: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:  # fmt: skip
    """transformers' attention-function signature: q (B, H, T, D), k/v (B, Hkv, T, D)."""
    if not _ACTIVE or not _ACTIVE[-1].pending:
        raise FrontendError(f"{type(module).__name__}: attention ran without a cache update")
    state = _ACTIVE[-1]
    layer = state.pending.pop()
    b, h, t, d = query.shape
    kv_heads = key.shape[1]
    flat = [x.transpose(1, 2).reshape(b, t, -1) for x in (query, key, value)]
    out, kc, vc = cache_attention_op(
        *flat, state.caches[2 * layer], state.caches[2 * layer + 1], state.past_len, state.q_len,
        h, kv_heads, float(scaling if scaling is not None else 1 / math.sqrt(d)),
        int(sliding_window or 0), float(softcap or 0.0),
    )  # fmt: skip
    state.updated[2 * layer], state.updated[2 * layer + 1] = kc, vc
    return out.view(b, t, h, -1), None


@contextlib.contextmanager
def _attention_set(lm: nn.Module, fn: Any = _attention) -> Iterator[None]:
    """Route the model's attention to ``fn`` (as ``tgraph_cache``) for a trace or a probe."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, fn)
    config = lm.config
    before = config._attn_implementation
    try:
        lm.set_attn_implementation(ATTENTION_NAME)
    except Exception:  # noqa: BLE001 - older validation: set the config field directly
        config._attn_implementation = ATTENTION_NAME
    if config._attn_implementation != ATTENTION_NAME:
        raise FrontendError(
            f"{type(lm).__name__} does not dispatch attention through transformers' "
            "AttentionInterface; tgraph cannot capture its KV cache"
        )
    try:
        yield
    finally:
        try:
            lm.set_attn_implementation(before)
        except Exception:  # noqa: BLE001
            config._attn_implementation = before


class StepModule(nn.Module):
    """The traced wrapper: one prefill or decode step of ``lm`` (see the module docstring)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        head = lm.get_output_embeddings()
        self._head = (head,)  # a tuple: not a second registration of the head's weights
        if head is None:
            raise FrontendError(f"{type(lm).__name__} has no output embeddings (LM head)")

    def forward(self, input_ids: Tensor, past_len: Tensor, q_len: Tensor, logits_at: Tensor,
                caches: list[Tensor]):  # fmt: skip
        b, t = input_ids.shape
        state = _StepState(list(caches), past_len, q_len)
        position_ids = past_len[:, None] + torch.arange(t, device=input_ids.device)[None, :]
        rows = logits_at[:, :, None]  # (B, P, 1)

        def chosen_rows_only(_module, args):  # the LM head sees (B, P, C), not (B, T, C)
            hidden = args[0]
            return (hidden.gather(1, rows.expand(b, rows.shape[1], hidden.shape[-1])), *args[1:])

        hook = self._head[0].register_forward_pre_hook(chosen_rows_only)
        _ACTIVE.append(state)
        try:
            out = self.lm(input_ids=input_ids, position_ids=position_ids, cache=state,
                          use_cache=True, logits_to_keep=0)  # fmt: skip
        finally:
            _ACTIVE.pop()
            hook.remove()
        missing = [i // 2 for i, c in enumerate(state.updated) if c is None]
        if missing:
            raise FrontendError(f"layers {sorted(set(missing))} never attended over their cache")
        return (out.logits, *state.updated)


# -- tracing -------------------------------------------------------------------------------------


def cache_geometry(lm: nn.Module) -> tuple[list[tuple[int, int, int]], str]:
    """(kv_heads, key head size, value head size) per layer, read off one eager probe step,
    and the import path of the model's output class (the plain forward returns one)."""
    shapes: list[tuple[int, int, int]] = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        shapes.append((key.shape[1], key.shape[3], value.shape[3]))
        return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[3]), None

    with _attention_set(lm, probe), torch.no_grad():
        out = lm(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=False)
    return shapes, f"{type(out).__module__}:{type(out).__qualname__}"


def trace_step(lm: nn.Module, max_length: int) -> Graph:
    """The step graph of ``lm`` (symbolic batch, seq and cache_len); see the module docstring."""
    from torch.export import Dim

    from tgraph.frontend import trace

    geometry, output_class = cache_geometry(lm)
    dtype = next(lm.parameters()).dtype
    b, t, cache_len = 3, 5, 11  # distinct example sizes, so export keeps them apart
    caches = []
    for kv_heads, dk, dv in geometry:
        caches += [torch.zeros(b, kv_heads, cache_len, dk, dtype=dtype),
                   torch.zeros(b, kv_heads, cache_len, dv, dtype=dtype)]  # fmt: skip
    args = (
        torch.zeros(b, t, dtype=torch.long),
        torch.zeros(b, dtype=torch.long),
        torch.full((b,), t, dtype=torch.long),
        torch.full((b, 2), t - 1, dtype=torch.long),
        caches,
    )
    batch, seq, length = Dim("batch"), Dim("seq"), Dim("cache_len", max=max_length)
    shapes = ({0: batch, 1: seq}, {0: batch}, {0: batch}, {0: batch, 1: Dim("positions")},
              [{0: batch, 2: length}] * len(caches))  # fmt: skip
    step = StepModule(lm).eval()
    with _attention_set(lm), traceable_experts(lm):
        try:
            ep = torch.export.export(step, args, dynamic_shapes=shapes, strict=False)
        except Exception as e:  # noqa: BLE001 - reported in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FrontendError(
                f"torch.export of {type(lm).__name__}'s decode step: {first}"
            ) from e
    graph = trace(ep)
    graph.name = f"{type(lm).__name__}_step"
    _name_io(graph, len(geometry))
    graph.meta["output_class"] = output_class
    return graph


def _name_io(graph: Graph, layers: int) -> None:
    for name, v in sorted(graph.initializers.items()):  # the model's own names, as in forward
        if name.startswith("lm."):
            graph.rename(v, name[3:])
    names = list(STEP_INPUTS)
    for i in range(layers):
        names += [f"k_cache_{i}", f"v_cache_{i}"]
    for v, name in zip(graph.inputs, names):
        if v.name != name:
            graph.rename(v, name)
    if graph.outputs[0].name != "logits":
        graph.rename(graph.outputs[0], "logits")
    for i, (out, state) in enumerate(zip(graph.outputs[1:], graph.inputs[len(STEP_INPUTS) :])):
        if out.producer is None or out.producer.op != "cache_attention":
            raise FrontendError(f"step output {i + 1} is not a cache update")
        graph.rename(out, f"{state.name}_next")
        out.meta["updates"] = state.name
    for key in ("in_spec", "out_spec", "signature", "traced_names", "n_args"):
        graph.meta.pop(key, None)
    graph.meta["input_names"] = [v.name for v in graph.inputs]
    graph.meta["output_names"] = [v.name for v in graph.outputs]
