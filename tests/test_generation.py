"""Generation with a KV cache: greedy tokens and teacher-forced logits against eager HF.

Every listed architecture (tiny random configs from model_cases), batch 2 with the second
row left-padded, on each backend; the compiled model is built once per (arch, backend).
"""

from __future__ import annotations

import pytest
import torch
from model_cases import hf_case

import tgraph
from tgraph.generation.generator import GenerationError, Generator
from tgraph.ir.ops import get_op

ARCHS = ["hf-gpt2", "hf-opt", "hf-gpt-neox", "hf-phi", "hf-llama", "hf-mistral", "hf-qwen2",
         "hf-gemma", "hf-gemma2", "hf-qwen3", "hf-phi3", "hf-llama3", "hf-gemma3",
         "hf-stablelm", "hf-starcoder2", "hf-olmo2", "hf-falcon", "hf-gptj", "hf-mixtral",
         "hf-qwen2-moe"]  # fmt: skip
BACKENDS = ["reference", "torch", "ort"]
PROMPT, PAD, NEW = 7, 3, 32

_COMPILED: dict[tuple[str, str], tuple[torch.nn.Module, Generator]] = {}


def _gemma2() -> torch.nn.Module:
    """Attention-logit softcap, sliding windows on alternate layers, final-logit softcap."""
    import transformers as T

    torch.manual_seed(0)
    config = T.Gemma2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    )  # fmt: skip
    return T.Gemma2ForCausalLM(config).eval()


def compiled(arch: str, backend: str) -> tuple[torch.nn.Module, Generator]:
    if (arch, backend) not in _COMPILED:
        lm = _gemma2() if arch == "hf-gemma2" else hf_case(arch).model
        example = {"input_ids": torch.randint(0, 100, (2, 5))}
        _COMPILED[arch, backend] = lm, tgraph.compile(lm, example, backend=backend)
    return _COMPILED[arch, backend]


def prompt(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (2, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :PAD], mask[1, :PAD] = 0, 0  # row 1 is left-padded
    return ids, mask


def eager_logits(lm, ids, mask, tokens) -> torch.Tensor:
    """Eager logits at the positions that predict ``tokens`` (positions from the mask)."""
    full = torch.cat([ids, tokens], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
    position_ids = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = lm(input_ids=full, attention_mask=full_mask, position_ids=position_ids,
                    use_cache=False).logits  # fmt: skip
    return logits[:, ids.shape[1] - 1 : -1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_eager(arch, backend):
    lm, gen = compiled(arch, backend)
    ids, mask = prompt()
    want = lm.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                       pad_token_id=0)  # fmt: skip
    got = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0)
    assert got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_forced_logits_match_eager(arch, backend):
    lm, gen = compiled(arch, backend)
    ids, mask = prompt(1)
    tokens = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    want = eager_logits(lm, ids, mask, tokens)
    got = gen.score(ids, tokens, attention_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# GPT-2 and OPT have no rotary; GPT-J's is the interleaved form (rotary_interleaved).
@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("hf-gpt2", "hf-opt")])
def test_rope_is_folded_into_cache_attention(arch):
    """The graphs the tests above check against eager attend with rotary inside the op."""
    _, gen = compiled(arch, "torch")
    graph = gen.step.graph
    assert not {"rotary", "cos", "sin"} & set(graph.op_histogram())
    attention = [n for n in graph.nodes if n.op == "cache_attention"]
    assert attention and all(len(n.inputs) == 9 for n in attention)


def test_ort_step_casts_the_lengths_once():
    """Every layer's GroupQueryAttention reads one int32 seqlens_k / total length / q_len."""
    from tgraph.backends.onnx_model import to_onnx

    _, gen = compiled("hf-llama", "torch")
    graph = gen.step.graph
    layers = sum(n.op == "cache_attention" for n in graph.nodes)
    model = to_onnx(graph, external={})
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert layers > 1 and len(gqa) == layers
    for slot in (5, 6, 16):  # seqlens_k, total_sequence_length, the query lengths
        assert len({n.input[slot] for n in gqa}) == 1, slot
    assert sum(n.op_type == "Cast" and n.input[0] == "q_len" for n in model.graph.node) == 1


@pytest.mark.parametrize("backend", ["reference", "torch", "ort"])
def test_eos_stops_each_row_and_pads(backend):
    lm, gen = compiled("hf-llama", backend)
    ids, mask = prompt()
    free = gen.generate(ids, attention_mask=mask, max_new_tokens=8)
    eos = int(free[0, PROMPT + 2])  # row 0 emits it at its third new token
    want = lm.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                       eos_token_id=eos, pad_token_id=1)  # fmt: skip
    got = gen.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos,
                       pad_token_id=1)  # fmt: skip
    assert torch.equal(got, want)
    assert (got[0, PROMPT + 3 :] == 1).all()


def test_sampling_is_seeded_and_filtered():
    _, gen = compiled("hf-llama", "torch")
    ids, mask = prompt()
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=True, temperature=0.7)
    a = gen.generate(ids, seed=5, top_k=5, **kw)
    b = gen.generate(ids, seed=5, top_k=5, **kw)
    assert torch.equal(a, b)
    one = gen.generate(ids, seed=6, top_k=1, **kw)  # top-1 sampling is greedy
    assert torch.equal(one, gen.generate(ids, attention_mask=mask, max_new_tokens=10))
    nucleus = gen.generate(ids, seed=6, top_p=1e-6, **kw)  # only the most likely token is left
    assert torch.equal(nucleus, one)


def test_greedy_pick_is_torch_argmax():
    """The NumPy argmax of greedy picks: torch's result, the first index on ties and NaN."""
    from tgraph.generation.sampling import greedy

    logits = torch.randn(4, 32000, generator=torch.Generator().manual_seed(0))
    logits[1, 7] = logits[1, 9] = 50.0  # a tie: the first index
    logits[2, 11] = float("nan")  # NaN wins, as in torch
    for x in (logits, logits.half(), logits.bfloat16(), logits[:, ::2]):
        got = greedy(x)
        assert got.dtype == torch.int64
        assert torch.equal(got, x.argmax(dim=-1))


def test_ort_decode_binds_its_inputs_once(monkeypatch):
    """The decode loop writes its inputs into buffers it made once, so the ORT step binds
    them at the first decode step only (prefill, first decode: at most two binds per input)."""
    import tgraph.backends.ort_cache as ort_cache

    _, gen = compiled("hf-llama", "ort")
    ids, mask = prompt()
    gen.generate(ids, attention_mask=mask, max_new_tokens=2)  # bind the caches of this shape
    binds: list[str] = []
    real = ort_cache._bind
    monkeypatch.setattr(
        ort_cache, "_bind", lambda f, name, t: (binds.append(name), real(f, name, t))
    )
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=6)
    assert out.shape[1] == PROMPT + 6
    # Prefill and first decode bind each input; a new buffer that the allocator happens to
    # place at the old one's address needs no new bind, so once is also right. Per-step
    # rebinding would show 6 or more.
    for name in ("input_ids", "past_len", "q_len", "logits_at"):
        assert 1 <= binds.count(name) <= 2, (name, binds)


def test_ort_bound_decode_rebinds_after_other_calls():
    """The ORT loop binds its decode step once (StepRunner.bind_decode). A call of the same
    runner on other buffers between two steps (here a plain forward from the streamer)
    must not leave the next step reading them: the tokens stay those of a quiet run, and
    the plain forward's outputs are its own."""
    _, gen = compiled("hf-llama", "ort")
    ids, mask = prompt()
    quiet = gen.generate(ids, attention_mask=mask, max_new_tokens=6)
    other = torch.randint(3, 100, (1, 4), generator=torch.Generator().manual_seed(5))
    alone = gen(other).logits.clone()
    seen = []

    class Meddler:
        def put(self, value):
            seen.append(gen(other).logits.clone())

        def end(self):
            pass

    out = gen.generate(ids, attention_mask=mask, max_new_tokens=6, streamer=Meddler())
    assert torch.equal(out, quiet)
    assert len(seen) == 7 and all(torch.equal(s, alone) for s in seen)


def test_ort_greedy_token_is_the_steps_own_argmax(monkeypatch):
    """The ORT step's session has a greedy_token output (ArgMax of the logits) that the IR
    graph does not; the greedy loop reads it, and gives the tokens of an argmax in Python
    over the same logits, batch 2 with a left-padded row."""
    from tgraph.backends import ort_cache
    from tgraph.generation import loop

    _, gen = compiled("hf-llama", "ort")
    runner = gen.step.runner
    assert runner.greedy and runner.output_names[-1] == ort_cache.GREEDY_OUTPUT
    assert ort_cache.GREEDY_OUTPUT not in [v.name for v in gen.step.graph.outputs]
    ids, mask = prompt()
    graph = gen.generate(ids, attention_mask=mask, max_new_tokens=8)
    bound = loop._decoder
    monkeypatch.setattr(loop, "_decoder", lambda *a: bound(*a, graph_argmax=False))
    host = gen.generate(ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(graph, host)


def test_greedy_output_takes_the_first_of_tied_maxima():
    """add_greedy_output's ArgMax picks the first index of a tied maximum, as torch.argmax
    and np.argmax do (eager generate's pick)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tgraph.backends.ort_cache import GREEDY_OUTPUT, add_greedy_output

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 6])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 6])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    add_greedy_output(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = np.array([[[1, 3, 3, 0, -1, 3]], [[5, 5, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 2]]],
                      dtype=np.float32)  # fmt: skip
    logits, token = session.run(["logits", GREEDY_OUTPUT], {"x": scores})
    assert token.dtype == np.int64 and token.shape == (3, 1)
    assert token[:, 0].tolist() == [1, 0, 5] == torch.from_numpy(scores).argmax(-1)[:, 0].tolist()
    half = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 1, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [1, 1, 6])],
    ))  # fmt: skip
    add_greedy_output(half)  # no 16-bit ArgMax kernel on ORT's CPU: left without one
    assert [o.name for o in half.graph.output] == ["logits"]


def test_streamer_gets_prompt_then_each_token():
    _, gen = compiled("hf-llama", "torch")
    ids, _ = prompt()

    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.clone())

        def end(self):
            self.calls.append("end")

    rec = Recorder()
    out = gen.generate(ids[:1], max_new_tokens=4, streamer=rec)
    assert torch.equal(rec.calls[0], ids[:1]) and rec.calls[-1] == "end"
    assert torch.equal(torch.stack(rec.calls[1:-1], dim=1), out[:, PROMPT:])
    t = gen.last_timings
    assert t.batch == 1 and t.new_tokens == 4 and t.prefill_s > 0 and len(t.decode_s) == 3


def test_plain_forward_still_works_with_cache_default():
    lm, gen = compiled("hf-llama", "torch")
    assert lm.config.use_cache  # the config default is untouched
    ids, _ = prompt()
    with torch.no_grad():
        want = lm(input_ids=ids).logits
    torch.testing.assert_close(gen(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)


def test_step_graph_declares_cache_state():
    _, gen = compiled("hf-mistral", "reference")
    graph = gen.step.graph
    nodes = [n for n in graph.nodes if n.op == "cache_attention"]
    assert len(nodes) == 2 and all(n.attrs["window"] == 8 for n in nodes)
    assert get_op("cache_attention").updates == {1: 3, 2: 4}
    for out, state in zip(graph.outputs[1:], graph.inputs[4:]):
        assert out.meta["updates"] == state.name
        assert out.producer.inputs[3 + graph.outputs[1:].index(out) % 2] is state
    assert "updates %k_cache_0" in graph.dump()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=60), "exceeds the model's maximum length 64"),
        (dict(max_new_tokens=2, input_ids=torch.tensor([[5, 100]])), "outside the vocabulary"),
        (dict(max_new_tokens=2, input_ids=torch.tensor([[5, -1]])), "outside the vocabulary"),
        (dict(max_new_tokens=2, attention_mask=torch.zeros(1, 7)), "has no token"),
    ],
)
def test_bad_generate_calls_raise_one_line(kwargs, message):
    _, gen = compiled("hf-llama", "torch")
    kwargs = {"input_ids": prompt()[0][:1], **kwargs}
    with pytest.raises(GenerationError, match=message) as info:
        gen.generate(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_save_load_generates_the_same_without_model_code(backend, tmp_path):
    _, gen = compiled("hf-qwen2", backend)
    ids, mask = prompt()
    want = gen.generate(ids, attention_mask=mask, max_new_tokens=6)
    gen.save(str(tmp_path / "art"))
    back = tgraph.load(str(tmp_path / "art"))
    assert isinstance(back, Generator) and back.backend == backend
    assert torch.equal(back.generate(ids, attention_mask=mask, max_new_tokens=6), want)
    torch.testing.assert_close(back(input_ids=ids).logits, gen(input_ids=ids).logits)


def test_dump_dir_holds_the_step_graph_passes(tmp_path):
    lm = hf_case("hf-llama").model
    gen = tgraph.compile(lm, {"input_ids": torch.randint(0, 100, (2, 5))}, backend="reference",
                         dump_dir=str(tmp_path))  # fmt: skip
    step_dumps = sorted((tmp_path / "step").glob("*.txt"))
    assert step_dumps and "cache_attention(" in step_dumps[-1].read_text()
    assert gen.graph is not None and any(tmp_path.glob("*.txt"))  # the plain forward's dumps


def test_moe_traces_one_experts_op_and_restores_the_models_own():
    """transformers' default experts (grouped_mm) do not export; the trace switches to
    tgraph's (one moe_experts op per layer, no gathered weights) and gives the model its own
    back (frontend/export.py traceable_experts)."""
    lm, gen = compiled("hf-mixtral", "ort")
    assert lm.config._experts_implementation not in (None, "tgraph", "batched_mm")
    assert gen.step is not None
    for graph in (gen.graph, gen.step.graph):
        hist = graph.op_histogram()
        assert hist["moe_experts"] == lm.config.num_hidden_layers and "bmm" not in hist
