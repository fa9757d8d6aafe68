"""Semantic-segmentation evaluation as PASCAL VOC, ADE20K and mmsegmentation report it: one confusion matrix
summed over the whole set (ignored pixels left out), per-class IoU = TP / (TP + FP + FN), mIoU = mean over
the classes that occur in the ground truth or the predictions, pixel accuracy; plus the reports people look
at: a per-class table (terminal + CSV) and coloured-mask / overlay PNGs."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torchmetrics.classification import MulticlassConfusionMatrix

from ..viz import VOC_PALETTE, colorize, palette  # noqa: F401  (palette re-exported: its old home)


def confusion_metric(num_classes: int, ignore_index: int | None = 255) -> MulticlassConfusionMatrix:
    """torchmetrics' confusion matrix (rows: true class, columns: predicted), summed over every update and
    synced across ranks; pixels whose target is `ignore_index` are left out. Update it with label maps
    (B, H, W), not logits."""
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


@dataclass
class SegmentationScores:
    """Scores of one confusion matrix. Per-class values are NaN for a class with no pixel in either the
    ground truth or the predictions (IoU) or none in the ground truth (accuracy); the means skip NaNs."""

    iou: torch.Tensor  # (K,) float64
    acc: torch.Tensor  # (K,) recall per class
    gt_pixels: torch.Tensor  # (K,) int64
    pred_pixels: torch.Tensor  # (K,) int64
    miou: float
    macc: float
    pixel_acc: float


def scores_from_confusion(matrix: torch.Tensor) -> SegmentationScores:
    m = matrix.double().cpu()
    tp, gt, pred = m.diagonal(), m.sum(dim=1), m.sum(dim=0)
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = m.sum()
    return SegmentationScores(
        iou=iou, acc=acc, gt_pixels=gt.long(), pred_pixels=pred.long(),
        miou=_nanmean(iou), macc=_nanmean(acc), pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
    )


def _nanmean(x: torch.Tensor) -> float:
    keep = ~torch.isnan(x)
    return float(x[keep].mean()) if keep.any() else float("nan")


def iou_table(scores: SegmentationScores, class_names: list[str], csv_path: Path | None = None,
              title: str = "Per-class test IoU") -> Table:
    """Print a table of each class's IoU, accuracy and pixel counts, with the means underneath; save it as CSV."""
    table = Table(title=title)
    for col in ("class", "IoU", "acc", "gt pixels", "pred pixels"):
        table.add_column(col, justify="left" if col == "class" else "right")
    rows = []
    for i, name in enumerate(class_names):
        iou, acc = float(scores.iou[i]), float(scores.acc[i])
        gt, pred = int(scores.gt_pixels[i]), int(scores.pred_pixels[i])
        rows.append((i, name, iou, acc, gt, pred))
        table.add_row(name, _pct(iou), _pct(acc), str(gt), str(pred))
    table.add_section()
    table.add_row("mean", _pct(scores.miou), _pct(scores.macc), str(int(scores.gt_pixels.sum())), "")
    console = Console()
    console.print(table)
    console.print(f"mIoU {_pct(scores.miou)} · pixel accuracy {_pct(scores.pixel_acc)} · "
                  f"mean class accuracy {_pct(scores.macc)}")
    if csv_path is not None:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "class", "iou", "acc", "gt_pixels", "pred_pixels"])
            w.writerows((i, n, _num(iou), _num(acc), gt, pred) for i, n, iou, acc, gt, pred in rows)
            w.writerow(["", "mean", _num(scores.miou), _num(scores.macc), int(scores.gt_pixels.sum()), ""])
            w.writerow(["", "pixel_acc", _num(scores.pixel_acc), "", "", ""])
    return table


def _pct(v: float) -> str:
    return "—" if v != v else f"{v:.2%}"


def _num(v: float) -> str:
    return "" if v != v else f"{v:.6f}"


# ---------------------------------------------------------------------------------------------- pictures
# palette() and colorize() live in vitkit.viz (imported above, so the old `seg_metrics.palette` still works).


def save_index_png(mask: np.ndarray, path: Path) -> None:
    """A palette PNG: pixel values are the class indices (as VOC's SegmentationClass files), shown in colour."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.flatten().tolist())
    image.save(path)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, ignore_index: int | None = 255) -> np.ndarray:
    """The image (H, W, 3) uint8 with the coloured mask blended over it; background (0) and ignored pixels
    are left as they are."""
    out = image.astype(np.float32)
    paint = (mask != 0) if ignore_index is None else (mask != 0) & (mask != ignore_index)
    out[paint] = (1 - alpha) * out[paint] + alpha * colorize(mask)[paint]
    return out.round().astype(np.uint8)


def save_panels(panels: list[np.ndarray], path: Path, gap: int = 4) -> None:
    """Images of the same height side by side, separated by white gaps, as one PNG."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    Image.fromarray(canvas).save(path)
