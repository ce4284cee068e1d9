"""The token loop of ``Generator.generate``: one prefill step, then one decode step per token.

A decode step of a small model takes 1-2 ms, so what the loop does between steps counts:
each torch call on a (batch,) tensor costs 5-15 us of dispatch, and the loop used to make
about fifteen of them per token (230-250 us measured on the 58M Llama's int4 step, 15% of
it). The per-token bookkeeping (the pick, EOS rows, the next positions) is done on NumPy
arrays instead, and a decode step's inputs are buffers made once and written in place, so
the ORT step binds them once (backends/ort_cache.py).
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
    eos_ids = np.array(sorted(eos), dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    # A decode step's inputs, written in place each token (the ORT step binds them once).
    ones = torch.ones(batch, dtype=torch.long)  # every row's query length
    rows = torch.zeros(batch, 1, dtype=torch.long)  # its logits' row
    step_ids, step_past = torch.zeros(batch, 1, dtype=torch.long), torch.zeros_like(lens)
    out = np.empty((batch, new), dtype=np.int64)
    start = time.perf_counter()
    logits = gen._run(compact(ids, mask, lens), torch.zeros_like(lens), lens, caches)
    n = 0
    for i in range(new):
        token = np.where(done, pad, sampling.pick(logits).numpy())
        now = time.perf_counter()
        if i == 0:
            timings.prefill_s = now - start
        else:
            timings.decode_s.append(now - start)
        out[:, i] = token
        n = i + 1
        if streamer is not None:
            streamer.put(torch.from_numpy(token.copy()))
        if eos_ids.size:  # np.isin costs 40 us; a few ids compare directly
            done |= (token[:, None] == eos_ids).any(axis=1)
        if done.all() or i == new - 1:
            break
        start = time.perf_counter()
        step_ids.numpy()[:, 0] = token
        step_past.numpy()[:] = past + i
        logits = gen._run(step_ids, step_past, ones, caches, rows)[:, 0]
    if streamer is not None:
        streamer.end()
    return torch.cat([ids, torch.from_numpy(out[:, :n])], dim=1)
