"""Pre-norm transformer blocks (Vaswani et al. 2017; pre-norm after Xiong et al. 2020), with LayerScale
(Touvron et al. 2021, CaiT) and stochastic depth (Huang et al. 2016). Parameter names follow timm's `Block`.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, KVCache


class Mlp(nn.Module):
    """Two-layer feed-forward network: Linear -> GELU -> Linear (timm names fc1/fc2)."""

    def __init__(self, dim: int, hidden_dim: int | None = None, out_dim: int | None = None, drop: float = 0.0) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim * 4
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch, initialised small (CaiT)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescaling the kept ones."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"DropPath: p={p}; expected a probability in [0, 1]")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _scale(dim: int, init_values: float | None) -> nn.Module:
    return LayerScale(dim, init_values) if init_values else nn.Identity()


def _drop(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class EncoderBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)). Serves the ViT encoder, the text encoder and any head
    that mixes tokens (Segmenter's mask transformer)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        drop_path: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop)
        self.ls1 = _scale(dim, init_values)
        self.drop_path1 = _drop(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = _scale(dim, init_values)
        self.drop_path2 = _drop(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        num_queries: int | None = None,
    ) -> torch.Tensor:
        """`num_queries`: compute the outputs of the first `num_queries` tokens only (all tokens still serve
        as keys/values), e.g. the class token in a ViT's last block when the head reads nothing else."""
        if num_queries is None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal,
                                                       cache=cache)))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        if attn_mask is not None and attn_mask.ndim >= 2 and attn_mask.shape[-2] == x.shape[1]:
            attn_mask = attn_mask[..., :num_queries, :]
        out = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, num_queries=num_queries)
        x = x[:, :num_queries] + self.drop_path1(self.ls1(out))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to a memory, then MLP; each pre-norm and residual.
    Serves DETR-style object queries (no causal mask) and text decoders (causal, with a KV cache)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        drop_path: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        memory_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop)
        self.ls1 = _scale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, cross=True,
                                    kv_dim=memory_dim)
        self.ls2 = _scale(dim, init_values)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls3 = _scale(dim, init_values)
        self.drop_path = _drop(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> torch.Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = x + self.drop_path(self.ls1(self.self_attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal,
                                                       cache=self_cache)))
        x = x + self.drop_path(self.ls2(self.cross_attn(self.norm2(x), memory, attn_mask=memory_mask,
                                                        cache=cross_cache)))
        return x + self.drop_path(self.ls3(self.mlp(self.norm3(x))))
