"""Registry of model families and named configs, and random example inputs for them.

``build("gpt-tiny")`` gives a randomly initialised model in eval mode; ``example_inputs`` gives
keyword arguments for its forward. Every ``-tiny`` config runs in milliseconds and is meant for
tests; the other names are full-size configs for benchmarks.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from .bert import Bert, BertConfig
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .transformer import TransformerConfig, TransformerEncoderModel
from .vit import ViT, ViTConfig

FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "transformer": (TransformerConfig, TransformerEncoderModel),
    "gpt": (GPTConfig, GPT),
    "bert": (BertConfig, Bert),
    "vit": (ViTConfig, ViT),
    "llama": (LlamaConfig, Llama),
}

ZOO: dict[str, tuple[str, Any]] = {
    "transformer": ("transformer", TransformerConfig()),
    "transformer-tiny": (
        "transformer",
        TransformerConfig(d_model=32, n_head=4, n_layer=2, d_ff=64, max_seq=64),
    ),
    "gpt-small": ("gpt", GPTConfig()),
    "gpt-tiny": ("gpt", GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_embd=32)),
    "bert-base": ("bert", BertConfig()),
    "bert-tiny": (
        "bert",
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
    ),
    "vit-base": ("vit", ViTConfig()),
    "vit-tiny": (
        "vit",
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        ),
    ),
    "llama-small": ("llama", LlamaConfig()),
    "llama-tiny": (
        "llama",
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),
    ),
}


class UnknownModelError(KeyError, ValueError):
    """A zoo name that is not registered; the message lists close matches."""

    def __str__(self) -> str:
        # KeyError would show the message in quotes.
        return str(self.args[0]) if self.args else ""


def list_zoo() -> list[str]:
    """Returns the registered model names, sorted."""
    return sorted(ZOO)


def _lookup(name: str) -> tuple[str, Any]:
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, list(ZOO), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(list_zoo())}"
    raise UnknownModelError(f"unknown model {name!r}; {hint}")


def build(name: str, seed: int = 0) -> nn.Module:
    """Builds a zoo model with random weights.

    The global torch RNG is seeded for the build and restored afterwards, so the same name and
    seed always give the same weights and the caller's random stream is left alone.

    Args:
        name: A name from :func:`list_zoo`, e.g. ``"gpt-tiny"``.
        seed: Seed for the weights.

    Returns:
        The model in eval mode, with ``model.family`` and ``model.config`` set.

    Raises:
        UnknownModelError: ``name`` is not registered.
    """
    family, config = _lookup(name)
    model_cls = FAMILIES[family][1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def _family_and_config(name_or_model: str | nn.Module) -> tuple[str, Any]:
    if isinstance(name_or_model, str):
        return _lookup(name_or_model)
    family = getattr(name_or_model, "family", None)
    config = getattr(name_or_model, "config", None)
    if family not in FAMILIES or config is None:
        raise TypeError(
            f"{type(name_or_model).__name__} is not a zoo model (no 'family'/'config' attributes)"
        )
    return family, config


def _check_seq(family: str, seq: int, limit: int) -> None:
    if not 1 <= seq <= limit:
        raise ValueError(f"seq {seq} is outside 1..{limit} for this {family} config")


def example_inputs(
    name_or_model: str | nn.Module, batch: int = 2, seq: int = 16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random keyword arguments for a zoo model's forward.

    - gpt, llama: ``input_ids`` (batch, seq) int64.
    - bert: ``input_ids``, ``attention_mask`` (the last row ends in padding when seq > 1) and
      ``token_type_ids`` (segment 0 for the first half of each row, 1 for the rest).
    - transformer: ``x`` (batch, seq, d_model) float32.
    - vit: ``pixel_values`` (batch, channels, image_size, image_size) float32; ``seq`` is ignored.

    Args:
        name_or_model: A zoo name, or a model built by :func:`build` (or any model carrying
            ``family`` and ``config``).
        batch: Batch size.
        seq: Sequence length, at most the config's maximum.
        seed: Seed of a private generator; the global RNG is not touched.

    Returns:
        A dict to call the model with as ``model(**inputs)``.
    """
    family, config = _family_and_config(name_or_model)
    gen = torch.Generator().manual_seed(seed)
    if family == "vit":
        shape = (batch, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(shape, generator=gen)}
    if family == "transformer":
        _check_seq(family, seq, config.max_seq)
        return {"x": torch.randn(batch, seq, config.d_model, generator=gen)}
    if family == "gpt":
        _check_seq(family, seq, config.block_size)
        return {"input_ids": torch.randint(0, config.vocab_size, (batch, seq), generator=gen)}
    if family == "llama":
        _check_seq(family, seq, config.max_position_embeddings)
        return {"input_ids": torch.randint(0, config.vocab_size, (batch, seq), generator=gen)}
    _check_seq(family, seq, config.max_position_embeddings)
    return _bert_inputs(config, batch, seq, gen)


def _bert_inputs(
    config: BertConfig, batch: int, seq: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    n_pad = min(max(seq // 4, 1), seq - 1)  # always leave at least one real token
    if n_pad:
        attention_mask[-1, seq - n_pad :] = 0
    token_type_ids = torch.zeros(batch, seq, dtype=torch.int64)
    if config.type_vocab_size > 1:
        token_type_ids[:, seq // 2 :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }
