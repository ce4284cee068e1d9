"""fuse-attention on every model case: how many attentions fuse, their layout, causal flags
and kv heads, checked against the reference interpreter at sizes other than the traced one."""

import pytest
from model_cases import ALL_CASES
from pass_helpers import check_pass
from test_pass_fuse_attention import CLEANUP, _attentions

# -- model cases -------------------------------------------------------------------------------

# Attention blocks per case, and whether the head split/merge around them became layout bsd.
# Llama's rotary sits between the split and the attention (the layout pass hoists it), and
# nn.MultiheadAttention splits heads out of (T, B, E) tensors: those stay bhsd.
MODELS = {
    "transformer-tiny": (2, "bsd"),
    "gpt-tiny": (2, "bsd"),
    "bert-tiny": (2, "bsd"),
    "vit-tiny": (2, "bsd"),
    "llama-tiny": (2, "bhsd"),
    "hf-bert": (2, "bsd"),
    "hf-distilbert": (2, "bsd"),
    "hf-gpt2": (2, "bsd"),
    "hf-llama": (2, "bhsd"),
    "hf-vit": (2, "bsd"),
    "hf-t5-encoder": (2, "bsd"),
    "nn-encoder": (2, "bhsd"),
    "nn-encoder-padding": (2, "bhsd"),
    "nn-decoder": (4, "bhsd"),
    "nn-transformer": (6, "bhsd"),
    "hf-roberta": (2, "bsd"),
    "hf-albert": (2, "bsd"),
    "hf-electra": (2, "bsd"),
    "hf-clip-text": (2, "bsd"),
    "hf-mobilebert": (2, "bsd"),
    "hf-bart": (6, "bsd"),
    "hf-whisper-encoder": (2, "bsd"),
    "hf-mistral": (2, "bhsd"),
    "hf-qwen2": (2, "bhsd"),
    "hf-gemma": (2, "bhsd"),
    "hf-phi": (2, "bhsd"),  # partial rotary slices the heads between split and attention
    "hf-gpt-neox": (2, "bhsd"),  # q, k, v chunked out of per-head packed (B, H, T, 3D)
    "hf-opt": (2, "bsd"),
    "hf-qwen3": (2, "bhsd"),  # per-head q/k RMSNorm sits between the split and attention
    "hf-phi3": (2, "bhsd"),
    "hf-llama3": (2, "bhsd"),
    "hf-gemma3": (2, "bhsd"),
    "hf-stablelm": (2, "bhsd"),
    "hf-starcoder2": (2, "bhsd"),
    "hf-olmo2": (2, "bhsd"),
    "hf-falcon": (2, "bhsd"),
    "hf-gptj": (2, "bhsd"),
    "hf-mixtral": (2, "bhsd"),
    "hf-qwen2-moe": (2, "bhsd"),
}
# Decoders whose mask is proven causal (index comparisons on aranges for OPT, BART and CLIP;
# Llama-style HF decoders trace transformers' packed-sequence mask: a general mask input).
CAUSAL_MODELS = {
    "gpt-tiny": 2, "llama-tiny": 2, "nn-transformer": 2, "hf-clip-text": 2, "hf-bart": 2,
    "hf-opt": 2,
}  # fmt: skip
# kv heads where they are not the 4 query heads: GQA with 2, Falcon's multi-query 1
KV_HEADS = {
    **dict.fromkeys(["llama-tiny", "hf-llama", "hf-mistral", "hf-qwen2", "hf-gemma", "hf-qwen3",
                     "hf-phi3", "hf-llama3", "hf-gemma3", "hf-stablelm", "hf-starcoder2",
                     "hf-olmo2", "hf-mixtral", "hf-qwen2-moe"], 2),
    "hf-falcon": 1,
}  # fmt: skip
# Softmaxes that are not attention: the MoE routers' (one per layer)
ROUTER_SOFTMAX = {"hf-mixtral": 2, "hf-qwen2-moe": 2}
# Cases other test files trace too (the trace is cached per session); the rest are slow.
SHARED = {"gpt-tiny", "llama-tiny", "hf-gpt2", "hf-llama", "hf-bert", "nn-encoder-padding"}


@pytest.mark.parametrize(
    "name", [n if n in SHARED else pytest.param(n, marks=pytest.mark.slow) for n in ALL_CASES]
)
def test_model_cases(name, traced_case):
    _, g = traced_case(name)
    count, layout = MODELS[name]
    for pipeline in ("fuse-attention,dce", CLEANUP):
        out, _ = check_pass(
            g,
            pipeline,
            appear=["attention"],
            disappear=["sdpa"] if name in ROUTER_SOFTMAX else ["softmax", "sdpa"],
            sizes=((2, 16), (1, 7)),
            int_high=2,
        )
        attns = _attentions(out)
        assert out.op_histogram().get("softmax", 0) == ROUTER_SOFTMAX.get(name, 0)
        assert len(attns) == count
        assert {a.attrs["layout"] for a in attns} == {layout}
        assert sum(a.attrs["causal"] for a in attns) == CAUSAL_MODELS.get(name, 0)
        kv = {a.attrs["kv_heads"] for a in attns}
        assert kv == {KV_HEADS.get(name, 4)}
