"""A plain Transformer encoder over float features.

Pre-norm blocks (LayerNorm before attention and before the MLP), a learned position table added to
the input, bidirectional attention and a final LayerNorm. The input is already a sequence of
d_model-wide vectors, so there is no token embedding: the model is the encoder stack on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._init import init_weights


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of :class:`TransformerEncoderModel`."""

    d_model: int = 512  # width of the residual stream (the input's last dim)
    n_head: int = 8  # attention heads; must divide d_model
    n_layer: int = 6  # encoder blocks
    d_ff: int = 2048  # hidden width of the MLP
    max_seq: int = 512  # rows of the learned position table: the longest input sequence
    activation: str = "gelu"  # MLP nonlinearity: "gelu" (erf form) or "relu"
    norm_eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation {self.activation!r}: want 'gelu' or 'relu'")


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with separate q, k, v projections."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.d_model // config.n_head
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, T)
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear, GELU (erf) or ReLU, Linear."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.activation = config.activation
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, d_ff)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return self.proj(h)  # (B, T, C)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class TransformerEncoderModel(nn.Module):
    """Pre-norm Transformer encoder over float features.

    Attributes:
        family: Zoo family name, ``"transformer"``.
        config: The :class:`TransformerConfig` the model was built from.
    """

    family = "transformer"

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else TransformerConfig()
        self.config = config
        self.pos_emb = nn.Embedding(config.max_seq, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes a batch of feature sequences.

        Args:
            x: Float tensor of shape (batch, seq, d_model) with seq <= config.max_seq.

        Returns:
            Tensor of shape (batch, seq, d_model): the final LayerNorm of the last block's output.
        """
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)  # (T,)
        x = x + self.pos_emb(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)
