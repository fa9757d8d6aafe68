"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), with DeiT configs
(Touvron et al. 2021) and register tokens (Darcet et al. 2024). Parameter names match timm's
`VisionTransformer`, so a timm state dict of the same config loads with `strict=True`.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.utils.checkpoint
from torch import nn

from ..nn import EncoderBlock, PatchEmbed, sincos_2d_pos_embed
from .registry import register_model

Pool = Literal["token", "avg"]


class VisionTransformer(nn.Module):
    """Patch embedding, prefix tokens (class, registers), position embedding, `depth` encoder blocks,
    final norm, pooling and a linear head. `forward_features` returns all tokens (B, prefix + N, dim).
    `stem_channels` (e.g. (32, 32, 64, 128)) puts a convolutional stem before the patchify (`PatchEmbed`):
    a hybrid that learns far faster from scratch on small images; timm checkpoints have no such stem."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: Pool = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        class_token: bool = True,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        pos_embed: Literal["learn", "sincos"] = "learn",
        fc_norm: bool | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_drop_rate: float = 0.0,
        stem_channels: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= patch_drop_rate < 1.0:
            raise ValueError(f"patch_drop_rate={patch_drop_rate}; expected 0 <= rate < 1")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool={global_pool!r}; expected 'token' or 'avg'")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without a class token")
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed={pos_embed!r}; expected 'learn' or 'sincos'")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.num_reg_tokens = reg_tokens
        self.no_embed_class = no_embed_class
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, stem_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = self.patch_embed.num_patches + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim), requires_grad=pos_embed == "learn")
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.patch_drop_rate = patch_drop_rate
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm, init_values, dpr[i], attn_drop_rate,
                         proj_drop_rate)
            for i in range(depth)
        )
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(pos_embed)

    # -- initialisation (timm's default 'vit' scheme: truncated normal 0.02, tiny prefix tokens) --
    def _init_weights(self, pos_embed: str) -> None:
        if pos_embed == "sincos":
            pe = sincos_2d_pos_embed(self.embed_dim, self.patch_embed.grid_size)
            start = 0 if self.no_embed_class else self.num_prefix_tokens
            self.pos_embed.data[:, start:] = pe  # prefix positions stay zero
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for t in (self.cls_token, self.reg_token):
            if t is not None:
                nn.init.normal_(t, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- conventions shared with timm: optimiser groups, classifier reset, checkpointing --
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n in ("pos_embed", "cls_token", "reg_token") if getattr(self, n, None) is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise learning-rate decay (timm's optim factory reads this)."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed|^reg_token",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.patch_embed.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    # -- forward --
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:  # positions for patches only, prefix tokens concatenated after
            return self.pos_drop(torch.cat(prefix + [x + self.pos_embed], dim=1))
        return self.pos_drop(torch.cat(prefix + [x], dim=1) + self.pos_embed)

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """PatchDropout (Liu et al. 2022; timm's `patch_drop_rate`): in training, each image keeps a random
        (1 - rate) of its patch tokens, prefix tokens always; the encoder's cost falls with the token count."""
        if not (self.training and self.patch_drop_rate > 0):
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        B, N, C = patches.shape
        keep = max(1, int(N * (1 - self.patch_drop_rate)))
        idx = torch.rand(B, N, device=x.device).topk(keep, dim=1).indices  # (B, keep)
        return torch.cat([prefix, patches.gather(1, idx[..., None].expand(-1, -1, C))], dim=1)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._drop_patches(self._pos_embed(self.patch_embed(x)))  # (B, C, H, W) -> (B, prefix + N, dim)

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + N, dim), every token (timm's contract)."""
        return self.norm(self._blocks(self._tokens(x), attn_mask))

    def _blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None, last_queries: int | None = None) -> torch.Tensor:
        for i, blk in enumerate(self.blocks):
            nq = last_queries if i == len(self.blocks) - 1 else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, attn_mask, False, None, nq, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask, num_queries=nq)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes). With class-token pooling the head reads one token, so the last block
        computes only that token's output (keys/values still from all tokens): the same logits as
        `forward_head(forward_features(x))` for about 1/depth less work. Attention capture on the last
        block turns this off, so its full attention map is recorded."""
        if self.global_pool != "token" or not len(self.blocks) or self.blocks[-1].attn.capture:
            return self.forward_head(self.forward_features(x))
        x = self._blocks(self._tokens(x), None, last_queries=1)  # (B, 1, dim)
        return self.forward_head(self.norm(x))


def _vit(config: dict, **kwargs) -> VisionTransformer:
    """Build a ViT from a config's numbers; keyword arguments override any of them (timm's convention)."""
    return VisionTransformer(**{"img_size": 224, **config, **kwargs})


# Sizes (dim, depth, heads): Ti 192/12/3, S 384/12/6, B 768/12/12, L 1024/24/16 (ViT and DeiT papers).
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


def _sized(size: str, patch_size: int, **kwargs) -> VisionTransformer:
    dim, depth, heads = _SIZES[size]
    return _vit(dict(patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads), **kwargs)


@register_model
def vit_tiny_patch16_224(**kw) -> VisionTransformer:
    return _sized("tiny", 16, **kw)


@register_model
def vit_tiny_patch32_224(**kw) -> VisionTransformer:
    return _sized("tiny", 32, **kw)


@register_model
def vit_small_patch16_224(**kw) -> VisionTransformer:
    return _sized("small", 16, **kw)


@register_model
def vit_small_patch32_224(**kw) -> VisionTransformer:
    return _sized("small", 32, **kw)


@register_model
def vit_base_patch16_224(**kw) -> VisionTransformer:
    return _sized("base", 16, **kw)


@register_model
def vit_base_patch32_224(**kw) -> VisionTransformer:
    return _sized("base", 32, **kw)


@register_model
def vit_large_patch16_224(**kw) -> VisionTransformer:
    return _sized("large", 16, **kw)


@register_model
def vit_large_patch32_224(**kw) -> VisionTransformer:
    return _sized("large", 32, **kw)


# DeiT (without distillation token) is the ViT architecture trained with a data-efficient recipe.
@register_model
def deit_tiny_patch16_224(**kw) -> VisionTransformer:
    return _sized("tiny", 16, **kw)


@register_model
def deit_small_patch16_224(**kw) -> VisionTransformer:
    return _sized("small", 16, **kw)


@register_model
def deit_base_patch16_224(**kw) -> VisionTransformer:
    return _sized("base", 16, **kw)


# Register tokens (Darcet et al. 2024): 4 extra prefix tokens, positions on patches only.
@register_model
def vit_small_patch16_reg4_224(**kw) -> VisionTransformer:
    return _sized("small", 16, **{"reg_tokens": 4, "no_embed_class": True, **kw})


# Small-image configs for CPU training (CIFAR, MNIST, upsampled digits): 4x4 patches on 32x32 images.
@register_model
def vit_tiny_patch4_32(**kw) -> VisionTransformer:
    return _sized("tiny", 4, **{"img_size": 32, **kw})


@register_model
def vit_small_patch4_32(**kw) -> VisionTransformer:
    return _sized("small", 4, **{"img_size": 32, **kw})


@register_model
def vit_nano_patch4_32(**kw) -> VisionTransformer:
    """A 6-block, 128-wide ViT: trains on a laptop CPU in minutes."""
    return _vit(dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4), **kw)
