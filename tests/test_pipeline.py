"""The pass pipeline on whole models: every pass alone keeps outputs, `default` fuses every
attention block, norm and GELU, and golden dumps pin the default pipeline's output."""

import os

import pytest
from model_cases import ZOO_CASES
from pass_helpers import assert_same_outputs

import tgraph
from tgraph.passes.manager import optimize
from tgraph.passes.registry import _PASSES

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
UPDATE = os.environ.get("TGRAPH_UPDATE_GOLDEN") == "1"
PASS_CASES = [*ZOO_CASES, "hf-bert", "hf-gpt2", "hf-llama"]


def _registered_passes():
    tgraph.list_passes()  # loads the registry
    # Lossy passes (compression) have their own tolerance tests (test_pass_quantize.py, ...).
    return sorted(n for n, cls in _PASSES.items() if not n.startswith("test-") and not cls.lossy)


@pytest.mark.parametrize("case_name", PASS_CASES)
def test_every_pass_alone_keeps_reference_outputs(case_name, traced_case):
    _, graph = traced_case(case_name)
    for name in _registered_passes():
        out, _ = optimize(graph, name)
        assert_same_outputs(graph, out, sizes=((1, 7), (3, 5)), seeds=(0,))


# case -> (layers, norms, gelus): what `default` must fuse completely.
FUSION_TARGETS = {
    "transformer-tiny": (2, 5, 2),
    "gpt-tiny": (2, 5, 2),
    "bert-tiny": (2, 5, 2),
    "vit-tiny": (2, 5, 2),
    "llama-tiny": (2, 5, 0),
    "hf-bert": (2, 5, 2),
    "hf-distilbert": (2, 5, 2),
    "hf-gpt2": (2, 5, 2),
    "hf-llama": (2, 5, 0),
    "hf-vit": (2, 5, 2),
    "nn-encoder": (2, 4, 0),
    "nn-encoder-padding": (2, 4, 0),
}
NORM_OPS = ("layer_norm", "rms_norm", "skip_layer_norm", "skip_rms_norm")
UNFUSED = ("softmax", "erf", "tanh", "rsqrt", "sdpa", "reduce_mean", "var")


@pytest.mark.parametrize("case_name", sorted(FUSION_TARGETS))
def test_default_fuses_every_attention_norm_and_gelu(case_name, traced_case):
    _, graph = traced_case(case_name)
    layers, norms, gelus = FUSION_TARGETS[case_name]
    out, _ = optimize(graph, "default")
    hist = out.op_histogram()
    assert hist.get("attention", 0) + hist.get("qkv_attention", 0) == layers, hist
    assert sum(hist.get(op, 0) for op in NORM_OPS) == norms, hist
    assert hist.get("gelu", 0) + hist.get("bias_gelu", 0) == gelus, hist
    leftovers = {op: hist[op] for op in UNFUSED if op in hist}
    if case_name in ("bert-tiny", "hf-bert", "hf-vit"):
        assert leftovers.pop("tanh", 1) == 1  # the pooler's tanh is not a GELU
    assert not leftovers, hist
    assert_same_outputs(graph, out, sizes=((1, 7), (3, 5)), seeds=(0,))


@pytest.mark.parametrize("case_name", ZOO_CASES)
def test_golden_default_dumps(case_name, traced_case):
    _, graph = traced_case(case_name)
    out, _ = optimize(graph, "default")
    path = os.path.join(GOLDEN, f"{case_name}.default.txt")
    text = out.dump()
    if UPDATE or not os.path.exists(path):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        if not UPDATE:
            pytest.fail(f"wrote missing golden file {path}; commit it")
    with open(path) as f:
        assert text == f.read(), "default pipeline output changed; TGRAPH_UPDATE_GOLDEN=1 to accept"


def _full_size(name):
    import torch
    import transformers as T

    torch.manual_seed(0)
    if name == "bert-base":
        model = T.BertModel(T.BertConfig())
        inputs = {
            "input_ids": torch.randint(0, 30522, (1, 32)),
            "attention_mask": torch.ones(1, 32, dtype=torch.long),
        }
    else:
        model = T.GPT2LMHeadModel(T.GPT2Config())
        inputs = {"input_ids": torch.randint(0, 50257, (1, 32)), "use_cache": False}
    return model.eval(), inputs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert-base", "gpt2"])
def test_default_removes_60_percent_of_nodes_on_full_size_models(name):
    model, inputs = _full_size(name)
    graph = tgraph.trace(model, inputs)
    out, records = optimize(graph, "default")
    assert len(out.nodes) <= 0.4 * len(graph.nodes), (len(graph.nodes), len(out.nodes))
    hist = out.op_histogram()
    assert hist.get("attention", 0) + hist.get("qkv_attention", 0) == 12
