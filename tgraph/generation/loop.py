"""The token loop of ``Generator.generate``: one prefill step, then one decode step per token.

A decode step of a small model takes 1-2 ms, so what the loop does between steps counts:
each torch call on a (batch,) tensor costs 5-15 us of dispatch, and the loop used to make
about fifteen of them per token (230-250 us measured on the 58M Llama's int4 step, 15% of
it). The per-token bookkeeping (the pick, the next positions) is done on NumPy arrays
instead, EOS rows on the Python list of the tokens, and a decode step's inputs are buffers
made once and written in place, so the ORT step binds them once (backends/ort_cache.py).

After a real step the same bookkeeping is about 10x slower than that: the step has just
streamed the weights through the caches, so every object the loop touches comes back from
far away (58M Llama on ORT: 300 us between two steps, 29 us with the session stubbed out).
So on ORT the decode step is bound once (``StepRunner.bind_decode``: a call with no
arguments that returns one logits buffer) and a greedy pick is the step's own ArgMax
output (backends/ort_cache.py), read through one NumPy view, with no torch call and no
pass over the logits between steps. Where the session has no such output (16-bit logits),
greedy is ``np.argmax`` on a view of the logits buffer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor


def token_loop(gen: Any, ids: Tensor, mask: Tensor, lens: Tensor, new: int, cache_len: int,
               sampling: Any, eos: set[int], pad: int, streamer: Any) -> Tensor:  # fmt: skip
    """(batch, prompt + n) int64: the prompt, then n <= ``new`` tokens (see ``generate``)."""
    from .generator import Timings, compact

    batch = ids.shape[0]
    caches = gen.step.new_caches(batch, cache_len, gen.device)
    timings = Timings(batch, ids.shape[1])
    gen.last_timings = timings
    if streamer is not None:
        streamer.put(ids.cpu())
    past = lens.numpy().astype(np.int64)  # each row's cache length after the prefill
    done = np.zeros(batch, dtype=bool)  # rows past their EOS
    finished = 0  # how many
    # A decode step's inputs, written in place each token (the ORT step binds them once).
    ones = torch.ones(batch, dtype=torch.long)  # every row's query length
    rows = torch.zeros(batch, 1, dtype=torch.long)  # its logits' row
    step_ids, step_past = torch.zeros(batch, 1, dtype=torch.long), torch.zeros_like(lens)
    out = np.empty((batch, new), dtype=np.int64)
    decode, pick = _decoder(gen, [step_ids, step_past, ones, rows], caches, sampling)
    ids_in, past_in = step_ids.numpy()[:, 0], step_past.numpy()
    start = time.perf_counter()
    logits = gen._run(compact(ids, mask, lens), torch.zeros_like(lens), lens, caches)
    n = 0
    for i in range(new):
        token = sampling.pick(logits).numpy() if i == 0 else pick(logits)
        if finished:  # rows past their EOS get the pad id
            token[done] = pad
        now = time.perf_counter()
        if i == 0:
            timings.prefill_s = now - start
        else:
            timings.decode_s.append(now - start)
        out[:, i] = token
        n = i + 1
        if streamer is not None:
            streamer.put(torch.from_numpy(token.copy()))
        if eos:  # in Python: a NumPy call costs about 10 us here (see above), a row 0.1
            for row, t in enumerate(token.tolist()):
                if t in eos and not done[row]:
                    done[row] = True
                    finished += 1
            if finished == batch:
                break
        if i == new - 1:
            break
        start = time.perf_counter()
        ids_in[:] = token
        np.add(past, i, out=past_in)
        logits = decode()
    if streamer is not None:
        streamer.end()
    return torch.cat([ids, torch.from_numpy(out[:, :n])], dim=1)


def _decoder(gen: Any, inputs: list[Tensor], caches: list[Tensor], sampling: Any,
             graph_argmax: bool = True):  # fmt: skip
    """(decode, pick): a decode step on ``inputs`` (written in place between calls) returning
    (B, V) logits, and the pick of a step's tokens from them as a NumPy array.

    ``graph_argmax=False`` makes a greedy pick on ORT an argmax in Python over the logits
    even where the step computes it (tools/gen_host_overhead.py compares the two)."""
    bind = getattr(gen.step.runner, "bind_decode", None)
    if bind is None:  # the torch and reference backends

        def decode() -> Tensor:
            return gen._run(*inputs[:3], caches, inputs[3])[:, 0]

        return decode, lambda logits: sampling.pick(logits).numpy()
    step, logits, argmax = bind(inputs + caches)
    view = logits[:, 0]  # (B, V): every call of step() rewrites it
    if sampling.do_sample or view.dtype not in (torch.float32, torch.float16):
        return (lambda: (step(), view)[1]), lambda logits: sampling.pick(logits).numpy()
    if argmax is not None and graph_argmax:
        tokens = argmax.numpy()[:, 0]  # (B,): the step's own ArgMax, rewritten by every call
        return (lambda: (step(), view)[1]), lambda _: tokens
    scores = view.numpy()

    def greedy(_: Tensor) -> np.ndarray:
        return np.argmax(scores, axis=-1)  # as sampling.greedy, without its torch calls

    return (lambda: (step(), view)[1]), greedy
