"""Pre-norm transformer blocks (Vaswani et al. 2017; pre-norm after Xiong et al. 2020), with LayerScale
(Touvron et al. 2021, CaiT), stochastic depth (Huang et al. 2016) and a gated (SwiGLU) MLP option (Shazeer 2020,
"GLU Variants Improve Transformer"; EVA-02). Parameter names follow timm's `Block`.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .attention import Attention, KVCache

Act = Literal["gelu", "quick_gelu", "gelu_tanh", "silu"]
MlpKind = Literal["mlp", "swiglu"]


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with (Radford et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: Act) -> nn.Module:
    """An activation by name: "gelu" (exact), "quick_gelu" (CLIP), "gelu_tanh" (SigLIP), "silu" (SwiGLU's gate)."""
    table = {"gelu": nn.GELU, "quick_gelu": QuickGELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
             "silu": nn.SiLU}
    if name not in table:
        raise ValueError(f"act_layer={name!r}; expected one of {sorted(table)}")
    return table[name]()


class Mlp(nn.Module):
    """Feed-forward network, timm names: Linear `fc1` -> act -> [`norm`] -> Linear `fc2`.

    `gated=True` is SwiGLU (Shazeer 2020) packed in one `fc1` of width 2 * hidden: act(first half) * second half,
    act SiLU by default (timm's `SwiGLUPacked`, EVA-02). `norm=True` puts a LayerNorm on the hidden width
    (EVA-02 base's `scale_mlp`, NormFormer's idea)."""

    def __init__(self, dim: int, hidden_dim: int | None = None, out_dim: int | None = None, drop: float = 0.0,
                 act_layer: Act | None = None, gated: bool = False, norm: bool = False, norm_eps: float = 1e-6) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim * 4
        self.gated = gated
        self.fc1 = nn.Linear(dim, hidden_dim * 2 if gated else hidden_dim)
        self.act = make_act(act_layer or ("silu" if gated else "gelu"))
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.LayerNorm(hidden_dim, eps=norm_eps) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.gated:
            gate, x = x.chunk(2, dim=-1)  # (B, N, 2 * hidden) -> two (B, N, hidden)
            x = self.act(gate) * x
        else:
            x = self.act(x)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


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
    that mixes tokens (Segmenter's mask transformer).

    The options the pretrained families need, each off by default: `act_layer` (CLIP's QuickGELU, SigLIP's tanh
    GELU), `norm_eps`, `mlp_layer="swiglu"` and `scale_mlp` (EVA-02), `scale_attn_inner` (a LayerNorm before the
    attention's output projection, EVA-02 base), and `num_prefix_tokens`/`rope_rotate_half` which say how a
    rotary embedding passed to `forward(rope=...)` applies (RoPE ViT, EVA-02, DINOv3)."""

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
        act_layer: Act | None = None,
        norm_eps: float = 1e-6,
        mlp_layer: MlpKind = "mlp",
        scale_mlp: bool = False,
        scale_attn_inner: bool = False,
        num_prefix_tokens: int = 0,
        rope_rotate_half: bool = False,
    ) -> None:
        super().__init__()
        if mlp_layer not in ("mlp", "swiglu"):
            raise ValueError(f"mlp_layer={mlp_layer!r}; expected 'mlp' or 'swiglu'")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, norm_eps=norm_eps,
                              scale_norm=scale_attn_inner, num_prefix_tokens=num_prefix_tokens,
                              rope_rotate_half=rope_rotate_half)
        self.ls1 = _scale(dim, init_values)
        self.drop_path1 = _drop(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, act_layer=act_layer, gated=mlp_layer == "swiglu",
                       norm=scale_mlp, norm_eps=norm_eps)
        self.ls2 = _scale(dim, init_values)
        self.drop_path2 = _drop(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        num_queries: int | None = None,
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`num_queries`: compute the outputs of the first `num_queries` tokens only (all tokens still serve
        as keys/values), e.g. the class token in a ViT's last block when the head reads nothing else.
        `rope`: a rotary position embedding for the non-prefix tokens (`vitkit.nn.RotaryEmbedding`)."""
        if num_queries is None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal,
                                                       cache=cache, rope=rope)))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        if attn_mask is not None and attn_mask.ndim >= 2 and attn_mask.shape[-2] == x.shape[1]:
            attn_mask = attn_mask[..., :num_queries, :]
        out = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, num_queries=num_queries, rope=rope)
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


class AttentionPool(Attention):
    """Multi-head attention pooling (MAP; Lee et al. 2019, "Set Transformer"; the SigLIP head, Zhai et al. 2023):
    a learned `latent` query cross-attends to all tokens, then out + mlp(norm(out)). (B, N, C) -> (B, C).
    The attention is vitkit's `Attention(cross=True)`; parameter names are timm's `AttentionPoolLatent`
    (`latent`, `q`, `kv`, `proj`, `norm`, `mlp`)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_norm: bool = False,
                 act_layer: Act | None = None, norm_eps: float = 1e-6) -> None:
        super().__init__(dim, num_heads, qkv_bias, qk_norm, cross=True, kv_dim=dim, norm_eps=norm_eps)
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.latent, std=dim**-0.5)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)  # after the attention (the inner scale_norm stays off)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(self.latent.expand(x.shape[0], -1, -1), context=x, attn_mask=attn_mask)  # (B, 1, C)
        out = out + self.mlp(self.norm(out))
        return out[:, 0]
