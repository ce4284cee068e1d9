"""A Vision Transformer (ViT) encoder.

The image is cut into non-overlapping patches by a Conv2d whose kernel and stride are the patch
size; a learned class token is prepended, a learned position table added, and the sequence goes
through pre-norm blocks (erf GELU MLP) and a final LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._init import init_weights


@dataclass(frozen=True)
class ViTConfig:
    """Hyperparameters of :class:`ViT`; the defaults are ViT-Base/16 at 224 pixels (86M)."""

    image_size: int = 224  # input height and width in pixels
    patch_size: int = 16  # side of a square patch; must divide image_size
    num_channels: int = 3  # input channels
    hidden_size: int = 768  # width of the residual stream
    num_hidden_layers: int = 12  # encoder blocks
    num_attention_heads: int = 12  # attention heads; must divide hidden_size
    intermediate_size: int = 3072  # hidden width of the MLP
    layer_norm_eps: float = 1e-6  # LayerNorm epsilon

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def num_patches(self) -> int:
        """Patches per image: (image_size / patch_size) ** 2."""
        return (self.image_size // self.patch_size) ** 2


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with one fused qkv projection."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, nh, hs)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, T)
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    """Feed-forward network: Linear, erf GELU, Linear."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class ViT(nn.Module):
    """Vision Transformer encoder returning the last hidden state.

    Attributes:
        family: Zoo family name, ``"vit"``.
        config: The :class:`ViTConfig` the model was built from.
    """

    family = "vit"

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else ViTConfig()
        self.config = config
        self.patch_embed = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + config.num_patches, config.hidden_size))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        init_weights(self)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encodes a batch of images.

        Args:
            pixel_values: Float tensor (batch, num_channels, image_size, image_size).

        Returns:
            Tensor (batch, 1 + num_patches, hidden_size); row 0 is the class token.
        """
        B = pixel_values.shape[0]
        x = self.patch_embed(pixel_values)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, C)
        x = torch.cat((cls, x), dim=1) + self.pos_embed  # (B, 1 + N, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
