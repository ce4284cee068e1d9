"""A BERT encoder with a pooler.

Word, position and token type embeddings summed and normalised, then post-norm blocks: self
attention with a padding mask, residual add and LayerNorm, an MLP with the erf GELU, residual add
and LayerNorm. The pooler is a dense layer and tanh on the first token's final hidden state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._init import init_weights


@dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of :class:`Bert`; the defaults are BERT-base (110M parameters)."""

    vocab_size: int = 30522  # token ids run from 0 to vocab_size - 1
    hidden_size: int = 768  # width of the residual stream
    num_hidden_layers: int = 12  # encoder blocks
    num_attention_heads: int = 12  # attention heads; must divide hidden_size
    intermediate_size: int = 3072  # hidden width of the MLP
    max_position_embeddings: int = 512  # rows of the position table: the longest input
    type_vocab_size: int = 2  # token type (segment) ids run from 0 to type_vocab_size - 1
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon, as in the original BERT

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )


def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turns a keep/pad mask into a bias added to attention scores.

    Args:
        attention_mask: Integer tensor (batch, seq), 1 for tokens to attend to and 0 for padding.
        dtype: Dtype of the attention scores.

    Returns:
        Tensor (batch, 1, 1, seq): 0 where kept, the most negative finite value of ``dtype``
        where padded, so padded keys get exactly zero weight after softmax.
    """
    keep = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - keep) * torch.finfo(dtype).min


class Embeddings(nn.Module):
    """Sum of word, position and token type embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)  # (B, T, C)
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        return self.ln(x)


class Attention(nn.Module):
    """Multi-head self-attention with an optional additive mask on the keys."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, T)
        if mask is not None:
            att = att + mask  # (B, nh, T, T) + (B, 1, 1, T)
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out(y)


class MLP(nn.Module):
    """Feed-forward network: Linear, erf GELU, Linear."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, T, C)


class Block(nn.Module):
    """Post-norm encoder block: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = Attention(config)
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, mask))
        x = self.ln_2(x + self.mlp(x))
        return x


class Pooler(nn.Module):
    """Dense layer and tanh on the first token's hidden state."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, C)


class Bert(nn.Module):
    """BERT encoder with pooler.

    Attributes:
        family: Zoo family name, ``"bert"``.
        config: The :class:`BertConfig` the model was built from.
    """

    family = "bert"

    def __init__(self, config: BertConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else BertConfig()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config)
        init_weights(self)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encodes a batch of token sequences.

        Args:
            input_ids: int64 tensor (batch, seq), seq <= config.max_position_embeddings.
            attention_mask: Optional int64 tensor (batch, seq), 1 = attend, 0 = padding.
                Without it every token is attended to.
            token_type_ids: Optional int64 tensor (batch, seq) of segment ids; zeros if omitted.

        Returns:
            ``{"last_hidden_state": (batch, seq, hidden), "pooler_output": (batch, hidden)}``.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        mask = None
        if attention_mask is not None:
            mask = additive_padding_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        for block in self.layers:
            x = block(x, mask)
        return {"last_hidden_state": x, "pooler_output": self.pooler(x)}
