"""Reports as pictures, next to the run's logs (trainer.log_dir): training curves plotted from the CSV
logger's metrics.csv at the end of `fit`, and a gallery of the best and worst test predictions.

Both are in the CLI's default callbacks. A task shows its kind of prediction in the gallery through
`VitkitTask.gallery_items(batch, outputs) -> [(score, image (3, H, W), caption)]` (higher score: better; None:
no gallery), `outputs` being what its `test_step` returned.
"""
from __future__ import annotations

import csv
import heapq
import itertools
import logging
import math
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger

from .viz import pyplot as _plt
from .viz import save_figure, to_display

log = logging.getLogger("vitkit")



# --------------------------------------------------------------------------- training curves
def read_metrics(path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """metrics.csv -> {column: (steps, values)} for every metric column with at least one value."""
    series: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or key is None or value in (None, ""):
                    continue
                series[key][0].append(float(step))
                series[key][1].append(float(value))
    return dict(series)


def curve_panels(columns: list[str]) -> dict[str, list[str]]:
    """Group metric columns into panels: "loss" (every */loss*), "learning rate" (lr-*), then one panel per
    other metric name shared across stages (train/acc and val/acc together). Test metrics are left out."""
    panels: dict[str, list[str]] = defaultdict(list)
    for col in sorted(columns):
        stage, _, name = col.rpartition("/")
        if stage == "test":
            continue
        if col.startswith("lr-"):
            panels["learning rate"].append(col)
        elif "loss" in name:
            panels["loss"].append(col)
        else:
            panels[name].append(col)
    order = ["loss"] + sorted(k for k in panels if k not in ("loss", "learning rate")) + ["learning rate"]
    return {k: panels[k] for k in order if k in panels}


def plot_training_curves(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """One panel per metric group against the optimiser step; None (and nothing written) when there is nothing
    to plot."""
    series = read_metrics(metrics_csv)
    panels = curve_panels(list(series))
    if not panels:
        return None
    plt = _plt()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (title, names) in zip(axes.flat, panels.items()):
        for name in names:
            steps, values = series[name]
            ax.plot(steps, values, marker="o" if len(steps) <= 50 else None, markersize=3, label=name)
        if title == "learning rate" and all(v > 0 for n in names for v in series[n][1]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    run = Path(metrics_csv).resolve().parent
    fig.suptitle(f"{run.parent.name}/{run.name}")
    return save_figure(fig, path)


class TrainingCurves(Callback):
    """At the end of `fit`, plot the CSV logger's metrics.csv (losses, metrics, learning rate against step)
    to `<trainer.log_dir>/training_curves.png`. Does nothing without a CSV logger."""

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename
        self.path: Path | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is None:
            log.info("training curves: no CSV logger, nothing plotted")
            return
        logger.save()  # flush rows still buffered
        metrics = Path(logger.log_dir) / "metrics.csv"
        if not metrics.is_file():
            return
        self.path = plot_training_curves(metrics, Path(log_dir or logger.log_dir) / self.filename)
        if self.path is not None:
            log.info("training curves written to %s", self.path)


# --------------------------------------------------------------------------- test gallery
class PredictionGallery(Callback):
    """After `test`, the `k` best and `k` worst predictions as `<trainer.log_dir>/test_gallery.png` (two rows:
    best, worst), scored by the task's `gallery_items`."""

    def __init__(self, k: int = 8, filename: str = "test_gallery.png") -> None:
        if k < 1:
            raise ValueError(f"PredictionGallery: k={k}; expected 1 or more")
        self.k, self.filename = k, filename
        self.path: Path | None = None
        self._reset()

    def _reset(self) -> None:
        self._best: list = []  # min-heap of (score, n, image, caption): the k highest scores
        self._worst: list = []  # min-heap of (-score, n, ...): the k lowest scores
        self._counter = itertools.count()
        self._supported = True

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._supported:
            return
        items = pl_module.gallery_items(batch, outputs) if hasattr(pl_module, "gallery_items") else None
        if items is None:
            self._supported = False
            log.debug("test gallery: %s gives no gallery items", type(pl_module).__name__)
            return
        for score, image, caption in items:
            n = next(self._counter)
            self._push(self._best, score, n, image, caption)
            self._push(self._worst, -score, n, image, caption)

    def _push(self, heap: list, key: float, n: int, image: torch.Tensor, caption: str) -> None:
        if len(heap) < self.k:
            heapq.heappush(heap, (key, n, image.detach().cpu().clone(), caption))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, n, image.detach().cpu().clone(), caption))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or not self._best:
            return
        best = [(s, img, cap) for s, _, img, cap in sorted(self._best, key=lambda t: (-t[0], t[1]))]
        worst = [(-s, img, cap) for s, _, img, cap in sorted(self._worst, key=lambda t: (-t[0], t[1]))]
        mean, std = _normalisation(trainer)
        out = Path(log_dir or trainer.default_root_dir) / self.filename
        self.path = save_gallery(best, worst, out, mean, std, f"{type(pl_module).__name__}: test predictions")
        log.info("test gallery written to %s", self.path)


def _normalisation(trainer: pl.Trainer):
    hp = getattr(getattr(trainer, "datamodule", None), "hparams", {}) or {}
    return hp.get("mean"), hp.get("std")


def save_gallery(best: list, worst: list, path: Path, mean=None, std=None, title: str = "") -> Path:
    """Two rows of captioned thumbnails: best (green titles) and worst (red titles)."""
    plt = _plt()
    cols = max(len(best), len(worst))
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 5.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (row, colour, label) in enumerate(((best, "tab:green", "best"), (worst, "tab:red", "worst"))):
        for c, (score, image, caption) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(to_display(image, mean, std), interpolation="nearest")
            ax.set_title(f"{caption}\nscore {score:.2f}", fontsize=7, color=colour)
        axes[r, 0].text(-0.15, 0.5, label, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=10)
    return save_figure(fig, path, title)
