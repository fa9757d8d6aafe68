"""The one place vitkit draws from: matplotlib without a display, and tensors back to images people look at.
Run folders get their PNGs (curves, galleries, confusion matrices, overlays, caption sheets) through these, and
the colours live here too: VOC's class palette for segmentation masks and a colour per class name for boxes."""
from __future__ import annotations

from pathlib import Path

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
    if title:
        fig.suptitle(title, fontsize=10)
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------------------------- segmentation colours
def palette(num_colors: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map (num_colors, 3) uint8: class 0 black, then well-separated colours from the bits
    of the class index; 255 (the ignore value) is VOC's light grey-beige."""
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors[i] = (r, g, b)
    return colors


VOC_PALETTE = palette()  # (256, 3) uint8, what colorize and palette PNGs use


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-index map (H, W) -> RGB (H, W, 3) uint8 in the VOC colours."""
    return VOC_PALETTE[np.asarray(mask, dtype=np.int64) % 256]


# ---------------------------------------------------------------------------------------------- detection drawings
NAME_COLORS = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080",
]


def name_color(name: str) -> str:
    """A colour ("#rrggbb") for a class name, the same on every run: the name's character codes summed, modulo
    the ten colours of NAME_COLORS."""
    return NAME_COLORS[sum(map(ord, name)) % len(NAME_COLORS)]


def draw_detections(image_path: str, boxes: torch.Tensor, scores: torch.Tensor, names: list[str],
                    gt_boxes: torch.Tensor | None, out: Path, min_side: int = 384) -> Path:
    """Predicted boxes (xyxy, original pixels) with "name score" labels in colour, ground truth in thin white,
    on the original image upscaled so its short side is at least `min_side` pixels; saved as PNG."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    with Image.open(image_path) as im:
        image = np.array(im.convert("RGB"))
    s = max(1.0, min_side / min(image.shape[:2]))
    if s > 1:
        image = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * s), round(image.shape[0] * s)),
                                                         Image.NEAREST))
    canvas = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
    if gt_boxes is not None and len(gt_boxes):
        canvas = draw_bounding_boxes(canvas, gt_boxes.float() * s, colors="white", width=1)
    if len(boxes):
        labels = [f"{n} {v:.2f}" for n, v in zip(names, scores.tolist())]
        canvas = draw_bounding_boxes(canvas, boxes.float() * s, labels=labels, colors=[name_color(n) for n in names],
                                     width=2)
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(out)
    return out
