"""The one place vitkit draws from: matplotlib without a display, and tensors back to images people look at.
Run folders get their PNGs (curves, galleries, confusion matrices, overlays, caption sheets) through these."""
from __future__ import annotations

import numpy as np
import torch


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only: works with no display, in DataLoader workers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(image: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """(3, H, W) float tensor -> (H, W, 3) in [0, 1]: undo Normalize when mean/std are known, else min-max."""
    img = image.detach().float().cpu()
    if img.ndim == 3 and img.shape[0] in (1, 3) and mean is not None and std is not None:
        img = img * torch.as_tensor(std).view(-1, 1, 1) + torch.as_tensor(mean).view(-1, 1, 1)
    elif img.dtype != torch.uint8:
        img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.permute(1, 2, 0)
    return img.clamp(0, 1).numpy()


def denormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (3, H, W) tensor back to an (H, W, 3) uint8 image."""
    mean = torch.as_tensor(mean, dtype=x.dtype).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).view(3, 1, 1)
    img = (x.detach().cpu() * std + mean).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_figure(fig, path, title: str | None = None, tight: bool = True):
    """Write a matplotlib figure as a 100-dpi PNG (its folder created), with an optional title over it, and
    close it; returns the path."""
    from pathlib import Path

    if title:
        fig.suptitle(title, fontsize=10)
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
