"""A compiled causal LM holds its weights once: no reference to the model, the plain forward
on the step graph, ONNX Runtime's load-only arrays released (docs/generation.md, Memory)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from model_cases import hf_case

import tgraph
from tgraph.api import InputError


def _compiled(backend: str, arch: str = "hf-llama"):
    lm = hf_case(arch).model
    gen = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend=backend)
    return lm, gen


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_generator_keeps_no_reference_to_the_model(backend):
    lm, gen = _compiled(backend)
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        want = lm(input_ids=ids).logits
    tokens = gen.generate(ids, max_new_tokens=3)
    ref = weakref.ref(lm)
    del lm
    gc.collect()
    assert ref() is None, "the Generator keeps the nn.Module alive"
    out = gen(input_ids=ids)
    assert type(out).__name__ == "CausalLMOutputWithPast"
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(gen.generate(ids, max_new_tokens=3), tokens)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_plain_forward_on_the_step_matches_eager_with_left_padding(backend):
    lm, gen = _compiled(backend, "hf-gpt2")
    ids = torch.randint(3, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # what generate uses: real tokens count
    with torch.no_grad():
        want = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    got = gen(ids, attention_mask=mask).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-4, atol=1e-4)
    assert not got[~mask.bool()].any()  # padding positions are zero


def test_plain_forward_refuses_inputs_it_does_not_take():
    _, gen = _compiled("torch")
    with pytest.raises(InputError, match="takes input_ids and attention_mask") as info:
        gen(input_ids=torch.ones(1, 3).long(), position_ids=torch.zeros(1, 3).long())
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="outside the vocabulary"):
        gen(input_ids=torch.tensor([[1, 100]]))


def test_ort_step_graph_views_no_model_memory():
    """After lowering, no step-graph constant points into a parameter of the model."""
    lm, gen = _compiled("ort")
    gen.step.runner.wait_released()
    spans = [(p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()) for p in lm.parameters()]
    for v in gen.step.graph.initializers.values():
        start = v.const.ctypes.data
        assert not any(lo <= start < hi for lo, hi in spans), f"{v.name} views the model"


def test_ort_never_reads_the_arrays_it_only_read_at_load():
    """Overwrite every array the session only read while loading; outputs do not change."""
    from tgraph.backends.ort import lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32))
    x = torch.randn(3, 64)
    graph = tgraph.trace(model.eval(), (x,))
    graph, _ = tgraph.optimize(graph, "default")
    runner = lower(graph, "cpu", ort_optimizations=True)
    arrays = runner.external_arrays()
    assert runner.load_only and runner.load_only <= set(arrays)
    with torch.no_grad():
        want = model(x)
    with torch.no_grad():  # the load-only arrays view the model's weights (no snapshot)
        for p in model.parameters():
            p.fill_(float("nan"))
    assert all(np.isnan(arrays[name]).all() for name in runner.load_only)
    runner.release_load_only()
    assert not set(runner.external_arrays()) & runner.load_only
    torch.testing.assert_close(runner([x])[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pipeline, op", [("int8-weight", "linear_int8w"), ("int4", "linear_int4")])
def test_ort_never_reads_the_codes_it_converted_at_load(pipeline, op):
    """linear_int8w's Cast/Add/Cast/Reshape and linear_int4's BitwiseXor of the graph's codes
    are folded at load: the codes are load-only; zeroing them after load changes no output."""
    from tgraph.backends.ort import lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)
    )
    x = torch.randn(3, 128)
    graph, _ = tgraph.optimize(tgraph.trace(model.eval(), (x,)), pipeline)
    assert op in graph.op_histogram()
    runner = lower(graph, "cpu", ort_optimizations=True)
    arrays = runner.external_arrays()
    codes = {n.inputs[1].name for n in graph.nodes if n.op == op}
    assert codes and codes <= runner.load_only <= set(arrays)
    want = runner([x])[0]
    for name in runner.load_only:
        arrays[name].setflags(write=True)
        arrays[name][...] = 0
    runner.release_load_only()
    torch.testing.assert_close(runner([x])[0], want, rtol=0, atol=0)


def test_gen_memory_tool_reports_flat_decode_rss(tmp_path):
    """tools/gen_memory.py on a tiny model: the plain forward after ``del lm`` matches, and
    decode allocates nothing that grows from context 16 to 128."""
    import json
    import os
    import subprocess
    import sys

    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128, vocab_size=1000,
                           max_position_embeddings=256)  # fmt: skip
    T.LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "gen_memory.py")
    cmd = [sys.executable, tool, "--one", "--model", str(tmp_path), "--backends", "ort",
           "--contexts", "16,128", "--steps", "4"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["plain_err"] < 1e-4
    assert [c["context"] for c in row["contexts"]] == [16, 128]
    assert all(c["decode_peak"] < 2.0 for c in row["contexts"]), row["contexts"]
