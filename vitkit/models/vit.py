"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), with DeiT configs
(Touvron et al. 2021) and register tokens (Darcet et al. 2024). Parameter names match timm's
`VisionTransformer`, so a timm state dict of the same config loads with `strict=True`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.utils.checkpoint
from torch import nn

from ..nn import AttentionPool, EncoderBlock, PatchEmbed, RotaryEmbedding, resample_pos_embed, sincos_2d_pos_embed
from ..nn.blocks import Act, MlpKind
from .registry import register_model

Pool = Literal["token", "avg", "map"]


class VisionTransformer(nn.Module):
    """Patch embedding, prefix tokens (class, registers), position embedding, `depth` encoder blocks,
    final norm, pooling and a linear head. `forward_features` returns all tokens (B, prefix + N, dim).
    `stem_channels` (e.g. (32, 32, 64, 128)) puts a convolutional stem before the patchify (`PatchEmbed`):
    a hybrid that learns far faster from scratch on small images; timm checkpoints have no such stem.

    The options of today's pretrained families (each off by default, so a plain ViT keeps its layout):
        pre_norm: a LayerNorm `norm_pre` on the tokens before the blocks (CLIP); the patch projection then has
            no bias unless `patch_bias=True`.
        act_layer: "gelu" (the default; "silu" gates a SwiGLU MLP), "quick_gelu" (OpenAI CLIP), "gelu_tanh" (SigLIP).
        norm_eps: epsilon of every LayerNorm (1e-6 timm, 1e-5 CLIP/DINOv3, 1e-12 transformers' ViT).
        global_pool: "token" (class token), "avg" (mean of patch tokens), "map" (attention pooling, SigLIP).
        mlp_layer: "mlp" or "swiglu" (EVA-02); scale_mlp / scale_attn_inner: LayerNorms inside MLP / attention.
        pos_embed: "learn", "sincos" or "none" (positions from RoPE only).
        rope: 2-D rotary position embedding of queries and keys, "axial", "mixed" or "dinov3"
            (`vitkit.nn.RotaryEmbedding`, its options in `rope_kwargs`: temperature, grid_indexing, ...).
        dynamic_img_size: accept any input size the patch divides; position embeddings resampled per call.
    """

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
        pos_embed: Literal["learn", "sincos", "none"] = "learn",
        fc_norm: bool | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_drop_rate: float = 0.0,
        stem_channels: tuple[int, ...] | None = None,
        pre_norm: bool = False,
        patch_bias: bool | None = None,
        act_layer: Act | None = None,
        norm_eps: float = 1e-6,
        mlp_layer: MlpKind = "mlp",
        scale_mlp: bool = False,
        scale_attn_inner: bool = False,
        rope: Literal["axial", "mixed", "dinov3"] | None = None,
        rope_kwargs: dict | None = None,
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= patch_drop_rate < 1.0:
            raise ValueError(f"patch_drop_rate={patch_drop_rate}; expected 0 <= rate < 1")
        if global_pool not in ("token", "avg", "map"):
            raise ValueError(f"global_pool={global_pool!r}; expected 'token', 'avg' or 'map'")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without a class token")
        if pos_embed not in ("learn", "sincos", "none"):
            raise ValueError(f"pos_embed={pos_embed!r}; expected 'learn', 'sincos' or 'none'")
        if rope is not None and patch_drop_rate > 0:
            raise ValueError("patch_drop_rate > 0 with rope: dropped patches would need their rotary positions "
                             "gathered, which vitkit does not do; use one or the other")
        if rope_kwargs and rope is None:
            raise ValueError(f"rope_kwargs={rope_kwargs} without rope; expected rope='axial', 'mixed' or 'dinov3'")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.num_reg_tokens = reg_tokens
        self.no_embed_class = no_embed_class
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        bias = not pre_norm if patch_bias is None else patch_bias
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, stem_channels, bias=bias,
                                      dynamic_img_size=dynamic_img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = self.patch_embed.num_patches + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = None if pos_embed == "none" else nn.Parameter(
            torch.zeros(1, embed_len, embed_dim), requires_grad=pos_embed == "learn")
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.patch_drop_rate = patch_drop_rate
        self.rope = None if rope is None else RotaryEmbedding(embed_dim, num_heads, kind=rope, depth=depth,
                                                              **(rope_kwargs or {}))
        self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else nn.Identity()
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # stochastic depth grows with depth
        rotate_half = bool((rope_kwargs or {}).get("rotate_half", False))
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm, init_values, dpr[i], attn_drop_rate,
                         proj_drop_rate, act_layer=act_layer, norm_eps=norm_eps, mlp_layer=mlp_layer,
                         scale_mlp=scale_mlp, scale_attn_inner=scale_attn_inner,
                         num_prefix_tokens=self.num_prefix_tokens, rope_rotate_half=rotate_half)
            for i in range(depth)
        )
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.attn_pool = AttentionPool(embed_dim, num_heads, mlp_ratio, qkv_bias, act_layer=act_layer,
                                       norm_eps=norm_eps) if global_pool == "map" else None
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(pos_embed)

    # -- initialisation (timm's default 'vit' scheme: truncated normal 0.02, tiny prefix tokens) --
    def _init_weights(self, pos_embed: str) -> None:
        if pos_embed == "sincos":
            pe = sincos_2d_pos_embed(self.embed_dim, self.patch_embed.grid_size)
            start = 0 if self.no_embed_class else self.num_prefix_tokens
            self.pos_embed.data[:, start:] = pe  # prefix positions stay zero
        elif self.pos_embed is not None:
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
        names = {n for n in ("pos_embed", "cls_token", "reg_token") if getattr(self, n, None) is not None}
        return names | {f"rope.{n}" for n in getattr(self.rope, "no_weight_decay", set)()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise learning-rate decay (timm's optim factory reads this)."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed|^reg_token|^norm_pre|^rope",
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
    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Patch tokens (B, N, dim) -> with prefix tokens and positions (B, prefix + N, dim). `grid`: the patch
        grid of an input of another size than `img_size` (dynamic_img_size): positions are resampled to it."""
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        pe = self.pos_embed
        if pe is None:
            return self.pos_drop(torch.cat(prefix + [x], dim=1))
        # under export the grid is symbolic: always resample (the identity at the native grid) so that the
        # graph keeps the resampling instead of specialising on the example's size
        if grid is not None and (torch.compiler.is_exporting() or tuple(grid) != self.patch_embed.grid_size):
            pe = resample_pos_embed(pe, grid, self.patch_embed.grid_size,
                                    0 if self.no_embed_class else self.num_prefix_tokens)
        if self.no_embed_class:  # positions for patches only, prefix tokens concatenated after
            return self.pos_drop(torch.cat(prefix + [x + pe], dim=1))
        return self.pos_drop(torch.cat(prefix + [x], dim=1) + pe)

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

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, C, H, W) -> tokens (B, prefix + N, dim) ready for the blocks, and the rotary embedding of
        their patch grid (None without rope)."""
        grid = self.patch_embed.feat_size(x.shape[-2:])
        x = self.norm_pre(self._drop_patches(self._pos_embed(self.patch_embed(x), grid)))
        return x, None if self.rope is None else self.rope(grid)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)[0]

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + N, dim), every token (timm's contract)."""
        x, rope = self._embed(x)
        return self.norm(self._blocks(x, attn_mask, rope=rope))

    def _block_rope(self, rope: torch.Tensor | None, i: int) -> torch.Tensor | None:
        return rope[i] if rope is not None and self.rope.per_block else rope

    def _blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None, last_queries: int | None = None,
                rope: torch.Tensor | None = None, upto: int | None = None, every=None) -> torch.Tensor:
        """Run blocks 0..upto (all by default); `every(i, x)` sees each block's output."""
        blocks = self.blocks if upto is None else self.blocks[: upto + 1]
        for i, blk in enumerate(blocks):
            nq = last_queries if i == len(self.blocks) - 1 else None
            r = self._block_rope(rope, i)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, attn_mask, False, None, nq, r, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask, num_queries=nq, rope=r)
            if every is not None:
                every(i, x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: Literal["NCHW", "NLC"] = "NCHW",
        intermediates_only: bool = False,
    ):
        """Dense features of chosen blocks (timm's `forward_intermediates`): `indices` an int (the last n blocks),
        a list of block indices (negative from the end) or None (all). Each intermediate is the block's patch
        tokens, (B, dim, h, w) for "NCHW" or (B, N, dim) for "NLC", through the final `norm` if `norm=True`;
        `return_prefix_tokens` pairs each with its prefix tokens (B, prefix, dim). Returns the intermediates if
        `intermediates_only`, else (final normalised tokens, intermediates); `stop_early` skips later blocks."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'")
        take = _take_indices(len(self.blocks), indices)
        grid = self.patch_embed.feat_size(x.shape[-2:])
        tokens, rope = self._embed(x)
        found: list[torch.Tensor] = []
        keep = lambda i, y: found.append(self.norm(y) if norm else y) if i in take else None  # noqa: E731
        upto = max(take) if (stop_early or intermediates_only) and take else None
        tokens = self._blocks(tokens, None, rope=rope, upto=upto, every=keep)
        npt = self.num_prefix_tokens
        prefix, feats = [y[:, :npt] for y in found], [y[:, npt:] for y in found]
        if output_fmt == "NCHW":  # (B, h*w, dim) -> (B, dim, h, w)
            feats = [y.reshape(y.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous() for y in feats]
        out = list(zip(feats, prefix)) if return_prefix_tokens and npt else feats
        return out if intermediates_only else (self.norm(tokens), out)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            return self.attn_pool(x)
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
        x, rope = self._embed(x)
        x = self._blocks(x, None, last_queries=1, rope=rope)  # (B, 1, dim)
        return self.forward_head(self.norm(x))


def _take_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """Block indices for `forward_intermediates`: None -> all, n -> the last n, a list -> those (negative ok)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices}; expected 1..{depth} (the last n of {depth} blocks)")
        return list(range(depth - indices, depth))
    take = [i + depth if i < 0 else i for i in indices]
    bad = [i for i, t in zip(indices, take) if not 0 <= t < depth]
    if bad:
        raise ValueError(f"indices {bad} out of range; expected block indices in -{depth}..{depth - 1}")
    return take


def _vit(config: dict, **kwargs) -> VisionTransformer:
    """Build a ViT from a config's numbers; keyword arguments override any of them (timm's convention)."""
    return VisionTransformer(**{"img_size": 224, **config, **kwargs})


# Sizes (dim, depth, heads): Ti 192/12/3, S 384/12/6, B 768/12/12, L 1024/24/16 (ViT and DeiT papers).
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


def _sized(size: str, patch: int, **kwargs) -> VisionTransformer:
    dim, depth, heads = _SIZES[size]
    return _vit(dict(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads), **kwargs)


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


# ---------------------------------------------------------------------------------------------------------------
# The pretrained families people fine-tune today, under timm's names and with timm's parameter layout, so a timm
# checkpoint of each loads strictly and gives timm's outputs (tests/test_families.py). Sizes not listed follow the
# same pattern: any of these builders takes embed_dim/depth/num_heads overrides.

# DINOv2 (Oquab et al. 2024): patch 14 at 518 px, layer scale; registers (Darcet et al. 2024) on patches only.
_DINOV2 = dict(img_size=518, patch_size=14, init_values=1e-5, num_classes=0)
_REG4 = dict(reg_tokens=4, no_embed_class=True)
_FAMILY_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "giant": (1536, 40, 24)}


def _family(size: str, config: dict, **kwargs) -> VisionTransformer:
    dim, depth, heads = _FAMILY_SIZES[size]
    return _vit(dict(embed_dim=dim, depth=depth, num_heads=heads, **config), **kwargs)


@register_model
def vit_small_patch14_dinov2(**kw) -> VisionTransformer:
    return _family("small", _DINOV2, **kw)


@register_model
def vit_base_patch14_dinov2(**kw) -> VisionTransformer:
    return _family("base", _DINOV2, **kw)


@register_model
def vit_large_patch14_dinov2(**kw) -> VisionTransformer:
    return _family("large", _DINOV2, **kw)


@register_model
def vit_giant_patch14_dinov2(**kw) -> VisionTransformer:
    """DINOv2 ViT-g: a SwiGLU MLP (packed, SiLU gate) of hidden width 4096."""
    return _family("giant", {**_DINOV2, "mlp_ratio": 2.66667, "mlp_layer": "swiglu", "act_layer": "silu"}, **kw)


@register_model
def vit_small_patch14_reg4_dinov2(**kw) -> VisionTransformer:
    return _family("small", {**_DINOV2, **_REG4}, **kw)


@register_model
def vit_base_patch14_reg4_dinov2(**kw) -> VisionTransformer:
    return _family("base", {**_DINOV2, **_REG4}, **kw)


@register_model
def vit_large_patch14_reg4_dinov2(**kw) -> VisionTransformer:
    return _family("large", {**_DINOV2, **_REG4}, **kw)


# DeiT III (Touvron et al. 2022, "DeiT III: Revenge of the ViT"): layer scale 1e-6, positions on patches only.
_DEIT3 = dict(patch_size=16, no_embed_class=True, init_values=1e-6)


@register_model
def deit3_small_patch16_224(**kw) -> VisionTransformer:
    return _family("small", _DEIT3, **kw)


@register_model
def deit3_base_patch16_224(**kw) -> VisionTransformer:
    return _family("base", _DEIT3, **kw)


@register_model
def deit3_large_patch16_224(**kw) -> VisionTransformer:
    return _family("large", _DEIT3, **kw)


# CLIP image towers (Radford et al. 2021): a LayerNorm before the blocks, no patch bias, eps 1e-5; OpenAI's
# weights were trained with QuickGELU (the *_quickgelu_* names), OpenCLIP's with GELU.
_CLIP = dict(pre_norm=True, norm_eps=1e-5)


@register_model
def vit_base_patch32_clip_224(**kw) -> VisionTransformer:
    return _family("base", {**_CLIP, "patch_size": 32}, **kw)


@register_model
def vit_base_patch16_clip_224(**kw) -> VisionTransformer:
    return _family("base", {**_CLIP, "patch_size": 16}, **kw)


@register_model
def vit_large_patch14_clip_224(**kw) -> VisionTransformer:
    return _family("large", {**_CLIP, "patch_size": 14}, **kw)


@register_model
def vit_base_patch32_clip_quickgelu_224(**kw) -> VisionTransformer:
    return _family("base", {**_CLIP, "patch_size": 32, "act_layer": "quick_gelu"}, **kw)


@register_model
def vit_base_patch16_clip_quickgelu_224(**kw) -> VisionTransformer:
    return _family("base", {**_CLIP, "patch_size": 16, "act_layer": "quick_gelu"}, **kw)


@register_model
def vit_large_patch14_clip_quickgelu_224(**kw) -> VisionTransformer:
    return _family("large", {**_CLIP, "patch_size": 14, "act_layer": "quick_gelu"}, **kw)


# SigLIP and SigLIP 2 image towers (Zhai et al. 2023; Tschannen et al. 2025; timm keeps SigLIP 2's weights under
# the same names): no class token, attention pooling (MAP) — or the mean of the tokens in the *_gap_* variants.
_SIGLIP = dict(patch_size=16, class_token=False, global_pool="map")
_SIGLIP_GAP = dict(patch_size=16, class_token=False, global_pool="avg", fc_norm=False)


@register_model
def vit_base_patch16_siglip_224(**kw) -> VisionTransformer:
    return _family("base", _SIGLIP, **kw)


@register_model
def vit_base_patch16_siglip_256(**kw) -> VisionTransformer:
    return _family("base", {**_SIGLIP, "img_size": 256}, **kw)


@register_model
def vit_large_patch16_siglip_256(**kw) -> VisionTransformer:
    return _family("large", {**_SIGLIP, "img_size": 256}, **kw)


@register_model
def vit_so400m_patch14_siglip_224(**kw) -> VisionTransformer:
    """SigLIP So400m (Alabdulmohsin et al. 2023, shape-optimised): width 1152, 27 blocks, MLP ratio 3.7362."""
    return _vit(dict(patch_size=14, embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362, class_token=False,
                     global_pool="map"), **kw)


@register_model
def vit_base_patch16_siglip_gap_224(**kw) -> VisionTransformer:
    return _family("base", _SIGLIP_GAP, **kw)


# EVA-02 (Fang et al. 2024): SwiGLU MLP, 2-D RoPE (axial, positions relative to a 16x16 grid) on top of learned
# absolute positions, mean pooling; the base size normalises inside the MLP.
_EVA02 = dict(patch_size=14, mlp_ratio=4 * 2 / 3, mlp_layer="swiglu", global_pool="avg", num_classes=0,
              rope="axial", rope_kwargs=dict(ref_grid=(16, 16)))


@register_model
def eva02_tiny_patch14_224(**kw) -> VisionTransformer:
    return _vit(dict(embed_dim=192, depth=12, num_heads=3, **_EVA02), **kw)


@register_model
def eva02_small_patch14_224(**kw) -> VisionTransformer:
    return _family("small", _EVA02, **kw)


@register_model
def eva02_base_patch14_224(**kw) -> VisionTransformer:
    return _family("base", {**_EVA02, "scale_mlp": True}, **kw)


# RoPE ViT (Heo et al. 2024, "Rotary Position Embedding for Vision Transformer"): DeiT III recipe with 2-D RoPE
# instead of absolute positions — axial (fixed frequencies) or mixed (learned per block); *_ape_* keeps both.
_ROPE = dict(patch_size=16, init_values=1e-5, pos_embed="none", rope="axial",
             rope_kwargs=dict(temperature=100.0, grid_indexing="xy"))
_ROPE_MIXED = {**_ROPE, "rope": "mixed", "rope_kwargs": dict(temperature=10.0, grid_indexing="xy")}
_APE = dict(pos_embed="learn", no_embed_class=True)


@register_model
def vit_small_patch16_rope_224(**kw) -> VisionTransformer:
    return _family("small", _ROPE, **kw)


@register_model
def vit_base_patch16_rope_224(**kw) -> VisionTransformer:
    return _family("base", _ROPE, **kw)


@register_model
def vit_small_patch16_rope_mixed_224(**kw) -> VisionTransformer:
    return _family("small", _ROPE_MIXED, **kw)


@register_model
def vit_base_patch16_rope_mixed_224(**kw) -> VisionTransformer:
    return _family("base", _ROPE_MIXED, **kw)


@register_model
def vit_base_patch16_rope_ape_224(**kw) -> VisionTransformer:
    return _family("base", {**_ROPE, **_APE}, **kw)


@register_model
def vit_base_patch16_rope_mixed_ape_224(**kw) -> VisionTransformer:
    return _family("base", {**_ROPE_MIXED, **_APE}, **kw)


# DINOv3 (Siméoni et al. 2025): RoPE only (rotated halves, periods from temperature 100), 4 registers, layer
# scale, eps 1e-5, any input size; the *_qkvb variants have query/value biases. timm pools by mean by default.
_DINOV3 = dict(patch_size=16, qkv_bias=False, init_values=1e-5, reg_tokens=4, pos_embed="none", fc_norm=False,
               global_pool="avg", norm_eps=1e-5, dynamic_img_size=True, num_classes=0, rope="dinov3",
               rope_kwargs=dict(temperature=100.0, rotate_half=True))


@register_model
def vit_small_patch16_dinov3(**kw) -> VisionTransformer:
    return _family("small", _DINOV3, **kw)


@register_model
def vit_base_patch16_dinov3(**kw) -> VisionTransformer:
    return _family("base", _DINOV3, **kw)


@register_model
def vit_large_patch16_dinov3(**kw) -> VisionTransformer:
    return _family("large", _DINOV3, **kw)


@register_model
def vit_small_patch16_dinov3_qkvb(**kw) -> VisionTransformer:
    return _family("small", {**_DINOV3, "qkv_bias": True}, **kw)


@register_model
def vit_base_patch16_dinov3_qkvb(**kw) -> VisionTransformer:
    return _family("base", {**_DINOV3, "qkv_bias": True}, **kw)
