"""Tiny models for the test suite: the zoo's -tiny configs, Hugging Face models built from
their config classes with random weights, and torch.nn Transformer modules.

Each case gives a model in eval mode and ``make(batch, seq, seed)`` returning kwargs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tgraph.models import build, example_inputs


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    make: Callable[[int, int, int], dict[str, Any]]


def _ids(vocab: int, b: int, s: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, vocab, (b, s), generator=g)


def _padding_mask(b: int, s: int, g: torch.Generator) -> torch.Tensor:
    mask = torch.ones(b, s, dtype=torch.long)
    mask[-1, s - max(1, s // 4) :] = 0  # the last row ends in padding
    return mask


def _ids_and_mask(b: int, s: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": _ids(100, b, s, g), "attention_mask": _padding_mask(b, s, g)}


def _ids_without_cache(b: int, s: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": _ids(100, b, s, g), "use_cache": False}


def zoo_case(name: str) -> Case:
    model = build(name)
    return Case(name, model, lambda b, s, seed: example_inputs(model, batch=b, seq=s, seed=seed))


def hf_case(name: str) -> Case:
    import transformers as T

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if name == "hf-bert":
        model = T.BertModel(T.BertConfig(vocab_size=100, max_position_embeddings=64, **small))

        make = _ids_and_mask
    elif name == "hf-distilbert":
        model = T.DistilBertModel(
            T.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
        )

        make = _ids_and_mask
    elif name == "hf-gpt2":
        model = T.GPT2LMHeadModel(
            T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        )

        make = _ids_without_cache
    elif name == "hf-llama":
        config = T.LlamaConfig(
            vocab_size=100, num_key_value_heads=2, max_position_embeddings=64, **small
        )
        model = T.LlamaForCausalLM(config)

        make = _ids_without_cache
    elif name == "hf-vit":
        model = T.ViTModel(T.ViTConfig(image_size=32, patch_size=8, **small))

        def make(b, s, seed):
            g = torch.Generator().manual_seed(seed)
            return {"pixel_values": torch.randn(b, 3, 32, 32, generator=g)}
    elif name == "hf-t5-encoder":
        config = T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        model = T.T5EncoderModel(config)

        make = _ids_and_mask
    elif name in HF_ENCODERS:
        model, make = HF_ENCODERS[name](T, small), _ids_and_mask
    elif name in HF_DECODERS:
        model, make = HF_DECODERS[name](T, small), _ids_without_cache
    elif name == "hf-bart":
        model = T.BartModel(
            T.BartConfig(
                vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                decoder_ffn_dim=64, max_position_embeddings=64,
            )
        )  # fmt: skip

        def make(b, s, seed):
            return {**_ids_and_mask(b, s, seed), "use_cache": False}
    elif name == "hf-whisper-encoder":
        config = T.WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
            num_mel_bins=8, max_source_positions=16,
        )  # fmt: skip
        model = T.models.whisper.modeling_whisper.WhisperEncoder(config)

        def make(b, s, seed):  # the encoder takes exactly 2 * max_source_positions frames
            g = torch.Generator().manual_seed(seed)
            return {"input_features": torch.randn(b, 8, 32, generator=g)}
    else:
        raise KeyError(name)
    return Case(name, model.eval(), make)


# Tiny configs of more Hugging Face architectures (hidden 32, 2 layers, vocab 100), each with
# what sets it apart from BERT / Llama in a comment.
HF_ENCODERS: dict[str, Callable[[Any, dict], torch.nn.Module]] = {
    # position ids from a cumsum over input_ids != padding_idx
    "hf-roberta": lambda T, small: T.RobertaModel(
        T.RobertaConfig(vocab_size=100, max_position_embeddings=64, **small)
    ),
    # factorized embedding (16 -> 32) and one layer's weights shared by both layers
    "hf-albert": lambda T, small: T.AlbertModel(
        T.AlbertConfig(vocab_size=100, embedding_size=16, max_position_embeddings=64, **small)
    ),
    # embedding projected from 16 to 32
    "hf-electra": lambda T, small: T.ElectraModel(
        T.ElectraConfig(vocab_size=100, embedding_size=16, max_position_embeddings=64, **small)
    ),
    # causal & padding mask, quick_gelu (x * sigmoid(1.702 x)), pooled output at the argmax id
    "hf-clip-text": lambda T, small: T.CLIPTextModel(
        T.CLIPTextConfig(vocab_size=100, max_position_embeddings=64, eos_token_id=2, **small)
    ),
    # bottlenecks, NoNorm (x * w + b), trigram embedding (F.pad), several FFNs per layer
    "hf-mobilebert": lambda T, small: T.MobileBertModel(
        T.MobileBertConfig(
            vocab_size=100,
            hidden_size=32,
            embedding_size=16,
            intra_bottleneck_size=16,
            true_hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ),
}
# what most tiny decoder configs share: a 100-token vocabulary, 2 KV heads of 4 (GQA)
GQA = dict(vocab_size=100, num_key_value_heads=2, max_position_embeddings=64)
HF_DECODERS: dict[str, Callable[[Any, dict], torch.nn.Module]] = {
    # sliding-window attention (window 8 < the traced 16) and GQA
    "hf-mistral": lambda T, small: T.MistralForCausalLM(
        T.MistralConfig(**GQA, sliding_window=8, **small)
    ),
    # q/k/v projections with biases
    "hf-qwen2": lambda T, small: T.Qwen2ForCausalLM(T.Qwen2Config(**GQA, **small)),
    # RMSNorm weight as (1 + w), GELU-tanh MLP, embeddings scaled by sqrt(hidden)
    "hf-gemma": lambda T, small: T.GemmaForCausalLM(T.GemmaConfig(**GQA, head_dim=8, **small)),
    # partial rotary (half of each head), attention and MLP in parallel off one LayerNorm
    "hf-phi": lambda T, small: T.PhiForCausalLM(
        T.PhiConfig(vocab_size=100, max_position_embeddings=64, partial_rotary_factor=0.5, **small)
    ),
    # one packed qkv projection split per head, partial rotary, parallel residual
    "hf-gpt-neox": lambda T, small: T.GPTNeoXForCausalLM(
        T.GPTNeoXConfig(vocab_size=100, max_position_embeddings=64, rotary_pct=0.5, **small)
    ),
    # per-head RMSNorm of q and k before the rotary (q_norm / k_norm)
    "hf-qwen3": lambda T, small: T.Qwen3ForCausalLM(T.Qwen3Config(**GQA, head_dim=8, **small)),
    # one packed qkv_proj and one packed gate_up_proj, split in the model's own code
    "hf-phi3": lambda T, small: T.Phi3ForCausalLM(T.Phi3Config(**GQA, pad_token_id=0, **small)),
    # Llama 3.x: rotary frequencies rescaled by the "llama3" rope type, tied LM head
    "hf-llama3": lambda T, small: T.LlamaForCausalLM(
        T.LlamaConfig(
            **GQA,
            tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            **small,
        )
    ),
    # q/k norms, a sliding-window layer and a full one, each with its own rotary base
    "hf-gemma3": lambda T, small: T.Gemma3ForCausalLM(
        T.Gemma3TextConfig(
            **GQA,
            head_dim=8,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            **small,
        )
    ),
    # LayerNorm with bias, partial rotary (a quarter of each head)
    "hf-stablelm": lambda T, small: T.StableLmForCausalLM(T.StableLmConfig(**GQA, **small)),
    # LayerNorm, biased linears, GELU-tanh MLP without a gate, sliding window
    "hf-starcoder2": lambda T, small: T.Starcoder2ForCausalLM(
        T.Starcoder2Config(**GQA, sliding_window=8, **small)
    ),
    # RMSNorm after attention and MLP (not before), q/k norms over all heads at once
    "hf-olmo2": lambda T, small: T.Olmo2ForCausalLM(T.Olmo2Config(**GQA, **small)),
    # multi-query attention (one KV head) from one fused query_key_value, parallel residual
    "hf-falcon": lambda T, small: T.FalconForCausalLM(
        T.FalconConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            new_decoder_architecture=False,
            multi_query=True,
        )
    ),
    # interleaved rotary over the first 4 dims of each head, parallel attention and MLP
    "hf-gptj": lambda T, small: T.GPTJForCausalLM(
        T.GPTJConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)
    ),
    # mixture of experts: top-2 of 4 experts per token (traced as batched_mm experts)
    "hf-mixtral": lambda T, small: T.MixtralForCausalLM(
        T.MixtralConfig(**GQA, num_local_experts=4, num_experts_per_tok=2, **small)
    ),
    # experts plus a sigmoid-gated shared expert, routing weights not renormalized
    "hf-qwen2-moe": lambda T, small: T.Qwen2MoeForCausalLM(
        T.Qwen2MoeConfig(
            **GQA,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            **small,
        )
    ),
    # learned positions from a cumsum of the mask, (B*T, C) MLP, ReLU
    "hf-opt": lambda T, small: T.OPTForCausalLM(
        T.OPTConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        )
    ),
}


def nn_case(name: str) -> Case:
    torch.manual_seed(0)
    layer_args = dict(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
    if name in ("nn-encoder", "nn-encoder-padding"):
        layer = torch.nn.TransformerEncoderLayer(**layer_args)
        model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        padding = name == "nn-encoder-padding"

        def make(b, s, seed):
            g = torch.Generator().manual_seed(seed)
            kwargs = {"src": torch.randn(b, s, 32, generator=g)}
            if padding:
                kwargs["src_key_padding_mask"] = _padding_mask(b, s, g) == 0
            return kwargs
    elif name == "nn-decoder":
        model = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(**layer_args), 2)

        def make(b, s, seed):
            g = torch.Generator().manual_seed(seed)
            return {
                "tgt": torch.randn(b, s, 32, generator=g),
                "memory": torch.randn(b, s + 3, 32, generator=g),
            }
    elif name == "nn-transformer":
        model = torch.nn.Transformer(32, 4, 2, 2, 64, dropout=0.0, batch_first=True)

        def make(b, s, seed):
            g = torch.Generator().manual_seed(seed)
            return {
                "src": torch.randn(b, s + 2, 32, generator=g),
                "tgt": torch.randn(b, s, 32, generator=g),
                "tgt_mask": torch.nn.Transformer.generate_square_subsequent_mask(s),
                "tgt_is_causal": True,
            }
    else:
        raise KeyError(name)
    return Case(name, model.eval(), make)


ZOO_CASES = ["transformer-tiny", "gpt-tiny", "bert-tiny", "vit-tiny", "llama-tiny"]
HF_CASES = ["hf-bert", "hf-distilbert", "hf-gpt2", "hf-llama", "hf-vit", "hf-t5-encoder"]
HF_MORE_CASES = [
    *HF_ENCODERS, "hf-bart", "hf-whisper-encoder", *HF_DECODERS,
]  # fmt: skip
NN_CASES = ["nn-encoder", "nn-encoder-padding", "nn-decoder", "nn-transformer"]
ALL_CASES = ZOO_CASES + HF_CASES + HF_MORE_CASES + NN_CASES


def get_case(name: str) -> Case:
    if name in ZOO_CASES:
        return zoo_case(name)
    if name.startswith("hf-"):
        return hf_case(name)
    return nn_case(name)


def first_tensor(out: Any) -> torch.Tensor:
    """The main output of a model: the tensor itself, or the first entry of a structure."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "keys"):
        return out[next(iter(out.keys()))]
    return out[0]


def all_tensors(out: Any) -> list[torch.Tensor]:
    import torch.utils._pytree as pytree

    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


# A representative subset of tools/hf_sweep.py, built by the sweep's own generic shrink
# (tools/hf_sweep_config.py) and checked by its own harness (tests/test_models_sweep.py):
# model type -> (model class, what it exercises that the cases above do not).
SWEEP_CASES: dict[str, tuple[str, str]] = {
    "regnet": ("RegNetModel", "a CNN: batch norm, grouped convs, max and adaptive pooling"),
    "minimax_m2": ("MiniMaxM2Model", "MoE routing: topk, scatter, batched expert weights"),
    "apertus": ("ApertusModel", "xIELU activation: softplus, expm1"),
    "swin": ("SwinModel", "shifted windows: roll, window partition reshapes, patch merging"),
    "wav2vec2": ("Wav2Vec2Model", "raw audio: strided convs (seq//5 sizes), group / weight norm"),
}
