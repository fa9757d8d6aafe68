"""Patch embedding and position embeddings for image transformers (Dosovitskiy et al. 2021, ViT;
a convolutional stem as in Xiao et al. 2021, "Early Convolutions Help Transformers See Better";
2-D sin-cos positions as in MAE, He et al. 2022)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair (height, width); got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, H/p * W/p, dim) by one strided convolution (`proj`, timm name).

    `stem_channels` puts a small convolutional stem in front (Xiao et al. 2021): one 3x3 conv + BatchNorm +
    ReLU per entry, the last log2(p) of them with stride 2 (earlier ones stride 1, at full resolution); `proj`
    then patchifies what is left of the patch (a 1x1 conv once the stem has reduced by p). Same tokens out,
    but local edges and corners come from convolutions: on small images from scratch a ViT sees shapes far
    sooner (`benchmarks/conv_stem.py`). Without it the module and its weights are timm's.

    `bias=False` drops the projection's bias (CLIP, whose `norm_pre` follows). `dynamic_img_size=True` accepts
    any input size the patch divides (`img_size` is then the size the position embedding was made for).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16, in_chans: int = 3,
                 embed_dim: int = 768, stem_channels: Sequence[int] | None = None, bias: bool = True,
                 dynamic_img_size: bool = False) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        bad = [f"{n}={s}" for n, s, p in zip(("height", "width"), self.img_size, self.patch_size) if s % p or s <= 0]
        if bad:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size} ({', '.join(bad)}); "
                f"expected each side to be a positive multiple of the patch size, "
                f"e.g. img_size={self.patch_size[0] * max(1, round(self.img_size[0] / self.patch_size[0]))}"
            )
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.stem, kernel, width = None, self.patch_size, in_chans
        if stem_channels:
            self.stem, kernel, width = _conv_stem(in_chans, list(stem_channels), self.patch_size)
        self.proj = nn.Conv2d(width, embed_dim, kernel_size=kernel, stride=kernel, bias=bias)
        self.dynamic_img_size = dynamic_img_size

    def feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid (h, w) of an input of size (H, W)."""
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            ok = x.ndim == 4 and x.shape[1] == self.in_chans and all(
                s > 0 and s % p == 0 for s, p in zip(x.shape[-2:], self.patch_size))
            if not ok:
                raise ValueError(f"PatchEmbed: input of shape {tuple(x.shape)}; expected (B, {self.in_chans}, H, W) "
                                 f"with H and W multiples of the patch size {self.patch_size}")
        elif x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.in_chans:
            raise ValueError(
                f"PatchEmbed: input of shape {tuple(x.shape)}; expected (B, {self.in_chans}, "
                f"{self.img_size[0]}, {self.img_size[1]}). Build the model with img_size={tuple(x.shape[-2:])} "
                f"(position embeddings are resampled on load) or resize the input"
            )
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, dim, h, w) -> (B, h*w, dim)


def _conv_stem(
    in_chans: int, channels: list[int], patch: tuple[int, int]
) -> tuple[nn.Sequential, tuple[int, int], int]:
    """3x3 conv-BN-ReLU layers; the last ones stride 2 while the patch allows. Returns (stem, proj kernel, width)."""
    if any(not isinstance(c, int) or c <= 0 for c in channels):
        raise ValueError(f"stem_channels={channels}; expected positive integers (output channels per 3x3 conv)")
    if patch[0] != patch[1] or patch[0] & (patch[0] - 1):
        raise ValueError(f"a convolutional stem needs a square power-of-two patch size; got patch_size={patch}")
    downs = min(len(channels), patch[0].bit_length() - 1)  # stride-2 convs: at most log2(p)
    layers, width = [], in_chans
    for i, c in enumerate(channels):
        stride = 2 if i >= len(channels) - downs else 1
        layers += [nn.Conv2d(width, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        width = c
    kernel = patch[0] >> downs
    return nn.Sequential(*layers), (kernel, kernel), width


def sincos_2d_pos_embed(embed_dim: int, grid_size: tuple[int, int], temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (h*w, dim): a quarter of the channels each for sin/cos of y and x."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4; got {embed_dim}")
    h, w = grid_size
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim // 4))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a (1, prefix + h*w, dim) position embedding to another patch grid, keeping the prefix
    (class/register) positions as they are. The same grid returns the input unchanged."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot infer the grid of a position embedding with {n} patch positions; pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"position embedding has {n} patch positions; "
                         f"old_grid {old_grid} expects {old_grid[0] * old_grid[1]}")
    # under export the grid is symbolic: int() in to_2tuple would bake the example's size into the graph
    if not torch.compiler.is_exporting():
        new_grid = to_2tuple(new_grid)
        if tuple(old_grid) == new_grid:
            return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, dim, h, w)
    grid = F.interpolate(grid, size=new_grid, mode=mode, antialias=antialias and mode in ("bilinear", "bicubic"),
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
