"""Patch embedding and position embeddings for image transformers (Dosovitskiy et al. 2021, ViT;
2-D sin-cos positions as in MAE, He et al. 2022)."""
from __future__ import annotations

import math

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
    """Image (B, C, H, W) -> patch tokens (B, H/p * W/p, dim) by one strided convolution (`proj`, timm name)."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
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
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"PatchEmbed: input of shape {tuple(x.shape)}; expected (B, {self.proj.in_channels}, "
                f"{self.img_size[0]}, {self.img_size[1]}). Build the model with img_size={tuple(x.shape[-2:])} "
                f"(position embeddings are resampled on load) or resize the input"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, dim, h, w) -> (B, h*w, dim)


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
        raise ValueError(f"position embedding has {n} patch positions; old_grid {old_grid} expects {old_grid[0] * old_grid[1]}")
    new_grid = to_2tuple(new_grid)
    if tuple(old_grid) == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, dim, h, w)
    grid = F.interpolate(grid, size=new_grid, mode=mode, antialias=antialias and mode in ("bilinear", "bicubic"), align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
