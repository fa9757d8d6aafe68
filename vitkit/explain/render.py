"""Pictures of explanation maps (matplotlib, Agg): image | heatmap | overlay, a per-layer (x head) grid,
and the raw maps as .npy next to them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..viz import (
    denormalise,  # noqa: F401 - part of this module's interface
    save_figure,
)
from ..viz import pyplot as _plt


def normalise(heatmap: np.ndarray | torch.Tensor) -> np.ndarray:
    """Scale a map to [0, 1] for display (a constant map becomes zeros)."""
    m = np.asarray(heatmap, dtype=np.float64)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def upsample(heatmap: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(gh, gw) patch map -> (H, W) pixels, bilinear (patch centres keep their values)."""
    t = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _overlay(ax, image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.imshow(normalise(upsample(heatmap, image.shape[:2])), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()


def save_overlay(image: np.ndarray, heatmap: np.ndarray | torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Three panels: the input image, the map on its patch grid (with a colour bar), and the map over the image."""
    plt = _plt()
    heatmap = np.asarray(heatmap, dtype=np.float32)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("image")
    axes[0].set_axis_off()
    im = axes[1].imshow(heatmap, cmap="jet", interpolation="nearest")
    axes[1].set_title(f"map ({heatmap.shape[0]}x{heatmap.shape[1]} patches)")
    axes[1].set_axis_off()
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    _overlay(axes[2], image, heatmap)
    axes[2].set_title("overlay")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def save_layer_grid(
    image: np.ndarray, layers: np.ndarray | torch.Tensor, path: str | Path, title: str = "", label: str = "layer"
) -> Path:
    """Per-layer overlays: (L, gh, gw) as a grid of L panels, or (L, heads, gh, gw) as L rows of one panel per
    head plus the head mean. Each panel is normalised on its own."""
    plt = _plt()
    layers = np.asarray(layers, dtype=np.float32)
    if layers.ndim == 4:
        rows, cols = layers.shape[0], layers.shape[1] + 1
        heads, cells = cols - 1, []
        for r in range(rows):
            for c in range(cols):
                name = f"head {c + 1}" if c < heads else "mean"
                cells.append((layers[r, c] if c < heads else layers[r].mean(0), f"{label} {r + 1} {name}"))
    else:
        cols = min(6, layers.shape[0])
        rows = math.ceil(layers.shape[0] / cols)
        cells = [(layers[i], f"{label} {i + 1}") for i in range(layers.shape[0])]
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (heatmap, name) in zip(axes.flat, cells):
        _overlay(ax, image, heatmap)
        ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_object_maps(
    image: np.ndarray,
    maps: np.ndarray | torch.Tensor,
    captions: list[str],
    path: str | Path,
    title: str = "",
    boxes: np.ndarray | torch.Tensor | None = None,
    first: np.ndarray | None = None,
    first_title: str = "detections",
) -> Path:
    """A first panel (`first`, default the image, with every box), then one overlay per object or class: its
    map (gh, gw), with its box (x0, y0, x1, y1 pixels) when boxes are given."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    maps = np.asarray(maps, dtype=np.float32)
    cols = min(4, len(maps) + 1)
    rows = math.ceil((len(maps) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes.flat[0].imshow(image if first is None else first, interpolation="nearest")
    axes.flat[0].set_title(first_title, fontsize=8)
    for i, (heatmap, caption) in enumerate(zip(maps, captions)):
        ax = axes.flat[i + 1]
        _overlay(ax, image, heatmap)
        ax.set_title(caption, fontsize=8)
        if boxes is not None:
            box = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[i]
            for target in (ax, axes.flat[0]):
                rect = Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor="white",
                                 linewidth=1.5)
                target.add_patch(rect)
            axes.flat[0].text(box[0], box[1], str(i + 1), color="white", fontsize=7, va="bottom")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_maps(stem: str | Path, heatmap: np.ndarray | torch.Tensor, layers: np.ndarray | torch.Tensor) -> list[Path]:
    """The raw (unnormalised) maps: `<stem>.npy` (gh, gw) and `<stem>_layers.npy` (L, [heads,] gh, gw)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + "_layers.npy")]
    for p, m in zip(paths, (heatmap, layers)):
        np.save(p, np.asarray(torch.as_tensor(m).detach().cpu(), dtype=np.float32))
    return paths


def _save(fig, path: str | Path) -> Path:
    return save_figure(fig, path, tight=False)
