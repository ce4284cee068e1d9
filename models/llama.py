"""A Llama-style decoder-only causal language model.

RMSNorm before attention and before the MLP, rotary position embeddings (rotate-half form) on
queries and keys, grouped-query attention (fewer key/value heads than query heads), a SwiGLU MLP,
no biases anywhere and an output head separate from the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._init import init_weights


@dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of :class:`Llama`; the defaults give a ~125M parameter model."""

    vocab_size: int = 32000  # token ids run from 0 to vocab_size - 1
    hidden_size: int = 768  # width of the residual stream
    intermediate_size: int = 2048  # hidden width of the SwiGLU MLP
    num_hidden_layers: int = 12  # decoder blocks
    num_attention_heads: int = 12  # query heads; must divide hidden_size
    num_key_value_heads: int = 4  # key/value heads; must divide num_attention_heads
    max_position_embeddings: int = 2048  # longest supported input (rotary needs no table)
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    rope_theta: float = 10000.0  # base of the rotary frequencies

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("head dim must be even for rotary embeddings")


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / sqrt(mean(x^2) + eps) * weight, with no mean or bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(
    seq_len: int, head_dim: int, theta: float, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin tables for rotary embeddings at positions 0..seq_len-1.

    Args:
        seq_len: Number of positions (may be symbolic under torch.export).
        head_dim: Size of one attention head; even.
        theta: Base of the frequencies.
        like: Tensor whose device and dtype the tables take.

    Returns:
        ``(cos, sin)``, each (seq_len, head_dim); the two halves of the last dim repeat the same
        frequencies, matching :func:`rotate_half`.
    """
    steps = torch.arange(0, head_dim, 2, device=like.device, dtype=torch.float32)  # (hs/2,)
    inv_freq = 1.0 / theta ** (steps / head_dim)  # (hs/2,)
    pos = torch.arange(seq_len, device=like.device, dtype=torch.float32)  # (T,)
    freqs = pos[:, None] * inv_freq[None, :]  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    return emb.cos().to(like.dtype), emb.sin().to(like.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Maps the halves (x1, x2) of the last dim to (-x2, x1)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates (B, nh, T, hs) queries or keys by their position's angles."""
    return x * cos + rotate_half(x) * sin  # (B, nh, T, hs) * (T, hs)


class Attention(nn.Module):
    """Causal grouped-query attention with rotary embeddings and no biases."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.n_kv_head = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        kv_dim = self.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs, nkv = self.head_dim, self.n_kv_head
        q = self.q_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        # Each key/value head serves n_head / n_kv_head consecutive query heads.
        n_rep = self.n_head // nkv
        k = k[:, :, None].expand(B, nkv, n_rep, T, hs).reshape(B, self.n_head, T, hs)
        v = v[:, :, None].expand(B, nkv, n_rep, T, hs).reshape(B, self.n_head, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        visible = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        att = torch.where(visible, att, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU feed-forward network: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Llama(nn.Module):
    """Llama-style causal language model.

    Attributes:
        family: Zoo family name, ``"llama"``.
        config: The :class:`LlamaConfig` the model was built from.
    """

    family = "llama"

    def __init__(self, config: LlamaConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else LlamaConfig()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Computes next-token logits at every position.

        Args:
            input_ids: int64 tensor (batch, seq), seq <= config.max_position_embeddings.

        Returns:
            Float tensor (batch, seq, vocab_size).
        """
        T = input_ids.shape[1]
        x = self.embed_tokens(input_ids)  # (B, T, C)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rotary_tables(T, head_dim, self.config.rope_theta, x)  # (T, hs) each
        for block in self.layers:
            x = block(x, cos, sin)
        x = self.norm(x)
        return self.lm_head(x)  # (B, T, vocab_size)
