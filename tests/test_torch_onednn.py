"""The generation step on the torch backend with fp32 linears on oneDNN's packed kernel
(backends/torch_onednn.py): same tokens and logits as eager, the graph's weight arrays
released and rebuilt exactly, save/load, and a clear refusal to pickle."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from model_cases import hf_case

import tgraph
from tgraph.backends import policy, torch_onednn

pytestmark = pytest.mark.skipif(
    not torch_onednn.available(torch.device("cpu")), reason="this torch has no oneDNN linear"
)


def _compile(arch: str, monkeypatch, pack: str):
    monkeypatch.setenv(policy.ENV_ONEDNN_LINEAR, pack)
    lm = hf_case(arch).model
    gen = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend="torch")
    return lm, gen


def _prompt() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0  # a left-padded row
    return ids, mask


@pytest.mark.parametrize("arch", ["hf-llama", "hf-gpt2"])
def test_packed_step_generates_eagers_tokens(arch, monkeypatch):
    lm, gen = _compile(arch, monkeypatch, "1")
    code = gen.step.runner.program.code
    assert "onednn_linear" in code and "torch._C._nn.linear" not in code
    ids, mask = _prompt()
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=12)
    with torch.no_grad():
        ref = lm.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          pad_token_id=0)  # fmt: skip
    assert torch.equal(out, ref)
    forced = out[:, 7:]
    logits = gen.score(ids, forced, attention_mask=mask)
    full = torch.cat([ids, forced], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(forced)], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        eager = lm(input_ids=full, attention_mask=full_mask, position_ids=positions).logits
    assert torch.allclose(logits, eager[:, 6:-1], atol=1e-4, rtol=1e-4)


def test_switch_off_keeps_f_linear(monkeypatch):
    _, gen = _compile("hf-llama", monkeypatch, "0")
    assert "onednn_linear" not in gen.step.runner.program.code
    assert not gen.step.runner.program.meta["onednn_linears"]


def test_graph_arrays_released_then_rebuilt_exactly(monkeypatch, tmp_path):
    lm, gen = _compile("hf-llama", monkeypatch, "1")
    sources = gen.step.runner.program.meta["onednn_linears"]
    assert sources and all(v.const.strides == (0,) * v.const.ndim for v, _ in sources)
    graph = gen.graph  # reading the graph rebuilds them
    weights = dict(lm.named_parameters())
    down = next(v for v, _ in sources if v.name.endswith("mlp.down_proj.weight"))
    assert down.const.strides != (0, 0)
    assert np.array_equal(down.const, weights[down.name].detach().numpy())
    assert graph is gen.step.graph
    ids, mask = _prompt()
    before = gen.generate(ids, attention_mask=mask, max_new_tokens=6)
    gen.step.runner.release_constants()
    gen.save(tmp_path / "gen.tg")  # saving rebuilds them too: no stand-ins written
    loaded = tgraph.load(tmp_path / "gen.tg")
    assert torch.equal(loaded.generate(ids, attention_mask=mask, max_new_tokens=6), before)


def test_packed_program_refuses_to_pickle_with_what_to_do(monkeypatch):
    _, gen = _compile("hf-llama", monkeypatch, "1")
    with pytest.raises(TypeError, match=r"do not pickle; save the compiled model with \.save"):
        pickle.dumps(gen.step.runner)


def test_packed_step_holds_nothing_of_the_model(monkeypatch):
    """Every tensor the packed step program holds, and every graph constant, is its own:
    dropping the model (often a memory-mapped checkpoint) frees all of the model's storage."""
    lm, gen = _compile("hf-llama", monkeypatch, "1")
    model = {t.untyped_storage().data_ptr() for t in lm.state_dict().values()}
    program = gen.step.runner.program
    held = [t for t in (*program.parameters(), *program.buffers()) if not t.is_mkldnn]
    assert held and not any(t.untyped_storage().data_ptr() in model for t in held)
    assert not list(program.parameters())  # frozen: an optimizer has nothing to step
    arrays = [t.detach().numpy() for t in lm.state_dict().values() if t.dtype != torch.bfloat16]
    for v in gen.graph.initializers.values():
        if isinstance(v.const, np.ndarray):
            assert not any(np.shares_memory(v.const, a) for a in arrays), v.name
