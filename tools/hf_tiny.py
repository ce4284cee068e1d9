"""Tiny random Hugging Face models for any architecture in transformers' auto mappings.

``tiny_model(model_type)`` builds the base model class of ``model_type`` from its default
config shrunk to 2 layers, hidden 32, 4 heads (2 key/value heads), MLP 64, vocab 1000,
images 32x32 in 8x8 patches, and returns it in eval mode with ``use_cache`` off;
``example_inputs(model, batch, seq)`` makes inputs for its main input (token ids,
pixels, log-mel features or a waveform). Used by ``tools/hf_sweep.py``; nothing is
downloaded.
"""

from __future__ import annotations

from typing import Any

import torch

# Config fields (the names differ by family) -> the tiny value. Only fields a config
# already has are set; sub-configs (text_config, vision_config, ...) are shrunk the same way.
TINY = (
    (2, ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers",
         "n_layers", "num_decoder_layers")),
    (32, ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "projection_dim")),
    (4, ("num_attention_heads", "n_head", "encoder_attention_heads",
         "decoder_attention_heads", "num_heads", "n_heads")),
    (64, ("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff",
          "n_inner", "hidden_dim")),
    (1000, ("vocab_size",)),
    (128, ("max_position_embeddings", "n_positions", "max_source_positions",
           "max_target_positions")),
    (8, ("head_dim", "d_kv", "kv_channels", "patch_size")),
    (4, ("rotary_dim",)),  # GPT-J rotates the first rotary_dim of each 8-wide head
)  # fmt: skip
KV_HEADS = ("num_key_value_heads", "multi_query_group_num")
# Special token ids must stay inside the tiny vocabulary.
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
             "sep_token_id", "cls_token_id", "mask_token_id", "unk_token_id")  # fmt: skip


def _set(config: Any, field: str, value: Any) -> None:
    """Set ``field`` when the config has it as an int (a derived property is left alone)."""
    if isinstance(getattr(config, field, None), int):
        try:
            setattr(config, field, value)
        except AttributeError:  # a read-only property computed from other fields
            pass


def shrink(config: Any, depth: int = 0) -> Any:
    """Set the tiny value of every size field ``config`` has, recursively."""
    for value, fields in TINY:
        for field in fields:
            _set(config, field, value)
    for field in KV_HEADS:
        _set(config, field, 2)
    for i, field in enumerate(TOKEN_IDS):
        value = getattr(config, field, None)
        if isinstance(value, int) and value >= 1000:
            _set(config, field, i)
    if isinstance(getattr(config, "image_size", None), int):
        config.image_size = 32
    if hasattr(config, "use_cache"):
        config.use_cache = False
    if depth < 2:
        for name in list(vars(config)):
            sub = getattr(config, name, None)
            if name.endswith("_config") and hasattr(sub, "to_dict"):
                shrink(sub, depth + 1)
    return config


def tiny_model(model_type: str, class_name: str) -> torch.nn.Module:
    import transformers

    config = shrink(transformers.AutoConfig.for_model(model_type))
    cls = getattr(transformers, class_name)
    torch.manual_seed(0)
    return cls._from_config(config).eval()


def example_inputs(model: torch.nn.Module, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Inputs for the model's main input; ValueError for kinds this sweep does not feed."""
    config = model.config
    name = getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    vocab = getattr(config, "vocab_size", None) or getattr(
        getattr(config, "text_config", None), "vocab_size", 1000
    )
    ids = torch.randint(0, min(vocab, 1000), (batch, seq), generator=g)
    # an encoder-decoder base model runs its decoder too
    extra = {"decoder_input_ids": ids} if getattr(config, "is_encoder_decoder", False) else {}
    if name == "input_ids":
        return {"input_ids": ids, **extra}
    if name == "pixel_values":
        size = getattr(config, "image_size", 32)
        size = (size, size) if isinstance(size, int) else tuple(size)
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(batch, channels, *size, generator=g), **extra}
    if name == "input_features":
        mels = getattr(config, "num_mel_bins", 80)
        frames = 2 * getattr(config, "max_source_positions", 64)
        return {"input_features": torch.randn(batch, mels, frames, generator=g), **extra}
    if name == "input_values":
        return {"input_values": torch.randn(batch, 400 * seq, generator=g), **extra}
    raise ValueError(f"main input {name!r} is not one this sweep feeds")
