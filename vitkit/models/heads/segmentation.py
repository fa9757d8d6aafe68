"""Semantic-segmentation heads on ViT patch tokens: a linear head and the mask transformer of Segmenter
(Strudel et al. 2021), and SETR's progressive-upsampling conv head (Zheng et al. 2021, "SETR-PUP").

Every head maps patch tokens (B, h*w, C) on an (h, w) grid to class logits (B, K, h', w'); the
`Segmenter` model upsamples them bilinearly to the input size. Heads never see prefix tokens.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import EncoderBlock

HeadName = Literal["linear", "mask_transformer", "conv"]


def _tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    B, N, C = x.shape
    h, w = grid
    if N != h * w:
        raise ValueError(f"segmentation head: {N} patch tokens do not fill a {h}x{w} grid; expected {h * w}")
    return x.transpose(1, 2).reshape(B, C, h, w)


def _init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LinearHead(nn.Module):
    """One linear layer per patch token: the class scores of a patch (Segmenter's "linear decoder")."""

    def __init__(self, embed_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)
        _init_linear(self)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return _tokens_to_map(self.head(self.drop(x)), grid)  # (B, N, C) -> (B, K, h, w)


class MaskTransformerHead(nn.Module):
    """Segmenter's mask transformer: K learned class embeddings join the projected patch tokens in a few
    `EncoderBlock`s; each class mask is the scalar product of L2-normalised patch and class features.

    Args:
        embed_dim: width of the encoder's tokens.
        num_classes: K, one learned class embedding each.
        depth: transformer blocks over [patches, classes] (2 in the paper).
        dim: width of the head (None: the encoder's width, as in the paper).
        num_heads: attention heads (None: dim // 64, at least 1).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: dropout after attention and MLP projections (0.1 in the paper).
        drop_path: stochastic-depth rate, growing linearly to this value over the blocks.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        depth: int = 2,
        dim: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        dim = dim or embed_dim
        num_heads = num_heads or max(1, dim // 64)
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(embed_dim, dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        dpr = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads, mlp_ratio, proj_drop=dropout, drop_path=dpr[i])
                                    for i in range(depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj_patch = nn.Parameter(dim**-0.5 * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(dim**-0.5 * torch.randn(dim, dim))
        self.mask_norm = nn.LayerNorm(num_classes, eps=1e-6)
        _init_linear(self)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_emb"}

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        K = self.num_classes
        x = self.proj_dec(x)  # (B, N, C) -> (B, N, D)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)  # (B, N + K, D)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches, classes = x[:, :-K] @ self.proj_patch, x[:, -K:] @ self.proj_classes
        patches = F.normalize(patches, dim=-1)
        classes = F.normalize(classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, N, D) x (B, D, K) -> (B, N, K)
        return _tokens_to_map(masks, grid)


class ConvUpsampleHead(nn.Module):
    """SETR's progressive upsampling ("PUP"): the token map goes through `num_upsample` stages of
    conv3x3 -> BatchNorm -> ReLU -> 2x bilinear upsampling, then a 1x1 classifier.

    Args:
        embed_dim: width of the encoder's tokens.
        num_classes: output channels.
        patch_size: the encoder's patch size; ``num_upsample`` defaults to log2 of it, so a power-of-two
            patch comes back to full resolution (any remainder is left to the final bilinear resize).
        channels: width of the conv stages (256 in SETR).
        num_upsample: number of 2x stages (None: from ``patch_size``).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        patch_size: int = 16,
        channels: int = 256,
        num_upsample: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        stages = int(math.log2(patch_size)) if num_upsample is None else num_upsample
        if stages < 0:
            raise ValueError(f"ConvUpsampleHead: num_upsample={stages}; expected 0 or more")
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        layers: list[nn.Module] = []
        for i in range(stages):
            layers += [
                nn.Conv2d(embed_dim if i == 0 else channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
        self.stages = nn.Sequential(*layers)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels if stages else embed_dim, num_classes, 1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.stages(_tokens_to_map(self.norm(x), grid))  # (B, C, h, w) -> (B, ch, h * 2^n, w * 2^n)
        return self.classifier(self.drop(x))


HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead, "mask_transformer": MaskTransformerHead, "conv": ConvUpsampleHead,
}


def build_head(name: HeadName, embed_dim: int, num_classes: int, patch_size: int, **kwargs) -> nn.Module:
    """A segmentation head by name; `kwargs` are the head's own arguments (depth, channels, dropout, ...)."""
    if name not in HEADS:
        raise ValueError(f"unknown segmentation head {name!r}; expected one of {', '.join(HEADS)}")
    if name == "conv":
        kwargs.setdefault("patch_size", patch_size)
    try:
        return HEADS[name](embed_dim, num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"segmentation head {name!r}: {err}") from err
