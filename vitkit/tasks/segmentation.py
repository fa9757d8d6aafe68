"""Semantic segmentation task (Segmenter, Strudel et al. 2021; evaluation as in mmsegmentation): per-pixel
cross-entropy with an ignore value and optional class weights, AdamW or SGD with warm-up and cosine or
poly decay (layer-wise lr decay as for classification), sliding-window inference on images larger than the
training crop, optional multi-scale + flip test, dataset-wide mIoU, per-class table and PNG overlays."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only

from ..errors import ConfigError
from ..models.segmenter import create_segmenter, sliding_window_logits
from .base import VitkitTask
from .seg_metrics import (
    colorize,
    confusion_metric,
    iou_table,
    overlay,
    save_index_png,
    save_panels,
    scores_from_confusion,
)

log = logging.getLogger("vitkit")


class SemanticSegmenter(VitkitTask):
    """Trains a registered segmentation model (`vitkit.models.segmenter.list_segmenters()`).

    Batches are dicts from `SegmentationDataModule`: ``image`` (B, 3, H, W) (or a list of (3, H, W) at
    evaluation), ``mask`` (B, H, W) int64 (or a list), ``path``.

    Args:
        model: registered segmentation model, e.g. ``segmenter_vit_small_patch16_512``.
        num_classes: number of classes (linked from the data module by the CLI).
        img_size: training crop and inference window side (linked from the data module); None: the model's.
        model_kwargs: further arguments of the model: ``head`` ("linear", "mask_transformer", "conv"),
            ``encoder`` (another registered ViT, or "timm:<name>"), ``encoder_kwargs``, ``head_kwargs``.
        pretrained: checkpoint file (or ``hf-hub:timm/<name>`` in the local cache) for the encoder; position
            embeddings are resampled to ``img_size``.
        class_names: names in reports (linked from the data module).
        ignore_index: mask value left out of the loss and the metrics; must match the data module's.
        class_weights: per-class weights of the cross-entropy (K values), e.g. inverse frequencies.
        lr: peak learning rate after warm-up.
        weight_decay: weight decay (never on norms, biases, position/class tokens, class embeddings).
        betas: AdamW betas.
        layer_decay: layer-wise learning-rate decay of the encoder blocks (None: off); the head trains at ``lr``.
        optimizer: "adamw", or "sgd" with ``momentum`` (the Segmenter paper's choice).
        momentum: SGD momentum.
        schedule: "cosine" (to ``min_lr_ratio * lr``) or "poly" (``(1 - t) ** poly_power``, floor ``min_lr_ratio``).
        poly_power: exponent of the poly schedule.
        warmup_epochs: linear warm-up length in epochs (fractions allowed); ``warmup_steps`` wins when set.
        warmup_steps: linear warm-up length in optimiser steps (for iteration-based recipes).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        eval_resize: at evaluation, resize each image so its short side is ``img_size`` (long side at most 4x)
            before the sliding windows, and score the logits resized back to the mask's resolution
            (mmsegmentation's protocol). False: the image keeps its size.
        slide_stride: stride of the evaluation windows (None: two thirds of ``img_size``).
        test_scales: test/predict scales relative to the resized image, averaged as softmax scores
            (e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] for the usual multi-scale test).
        test_flip: also average the horizontally flipped image at test/predict time.
        num_visualize: how many images ``test`` and ``predict`` draw as coloured masks and overlays.
        grad_checkpointing: recompute encoder block activations in backward (less memory, ~30% slower).
        compile: ``torch.compile`` the model in place (state-dict keys unchanged, so checkpoints load either way).
        compile_backend: the ``torch.compile`` backend ("inductor", "aot_eager", "eager", ...).
    """

    monitor = "val/mIoU"
    monitor_mode = "max"

    def __init__(
        self,
        model: str = "segmenter_vit_tiny_patch8_64",
        num_classes: int = 5,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        class_weights: list[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        momentum: float = 0.9,
        schedule: Literal["cosine", "poly"] = "cosine",
        poly_power: float = 0.9,
        warmup_epochs: float = 1.0,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.01,
        eval_resize: bool = True,
        slide_stride: int | None = None,
        test_scales: tuple[float, ...] = (1.0,),
        test_flip: bool = False,
        num_visualize: int = 8,
        grad_checkpointing: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_hparams(self.hparams)
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        self.model = self.build_model(create_segmenter, repr(model), model, num_classes=num_classes,
                                      pretrained=pretrained, **kwargs)
        self.model.set_grad_checkpointing(grad_checkpointing)
        self.maybe_compile(compile, compile_backend, self.model)
        self.window = self.model.img_size  # (h, w) of the crops the encoder takes
        self.stride = tuple(slide_stride or max(1, 2 * s // 3) for s in self.window)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.val_confusion = confusion_metric(num_classes, ignore_index)
        self.test_confusion = confusion_metric(num_classes, ignore_index)
        self._drawn = 0
        self._predictions: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) of images at the model's input size."""
        return self.model(x)

    # -- inference at any size --
    @torch.no_grad()
    def segment(self, x: torch.Tensor, scales: list[float] | tuple[float, ...] = (1.0,),
                flip: bool = False) -> torch.Tensor:
        """Class scores (B, K, H, W) of images (B, 3, H, W) of any size: each scale of the (resized) image goes
        through sliding windows, and the logits are resized back to (H, W). One pass returns logits; several
        (scales, flip) return their mean softmax."""
        H, W = x.shape[-2:]
        passes = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
        total = None
        for s, f in passes:
            xs = self._network_input(x, s)
            xs = xs.flip(-1) if f else xs
            logits = sliding_window_logits(self.model, xs, self.window, self.stride, self.hparams.num_classes)
            logits = logits.flip(-1) if f else logits
            if logits.shape[-2:] != (H, W):
                logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            if len(passes) == 1:
                return logits
            total = logits.softmax(dim=1) if total is None else total + logits.softmax(dim=1)
        return total / len(passes)

    def _network_input(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """The image at `scale` times its evaluation size (short side = img_size with eval_resize)."""
        H, W = x.shape[-2:]
        factor = scale
        if self.hparams.eval_resize:
            short, long = min(self.window), max(self.window)
            factor = scale * min(short / min(H, W), 4 * long / max(H, W))
        size = (max(1, round(H * factor)), max(1, round(W * factor)))
        if size == (H, W):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)

    # -- training --
    def loss(self, batch: dict) -> torch.Tensor:
        x, y = batch["image"], batch["mask"]
        if isinstance(x, list):
            sizes = sorted({tuple(t.shape[-2:]) for t in x})
            raise ConfigError(
                f"data.train_transforms: training images come in sizes {sizes[:4]}; expected every crop to be "
                f"{self.window[0]}x{self.window[1]} (img_size): end the pipeline with PadIfNeeded + RandomCrop"
            )
        return self.pixel_loss(self(x), y)

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the labelled pixels; a batch with none gives 0 (not NaN)."""
        if not (target != self.hparams.ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.hparams.ignore_index)

    # -- evaluation --
    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        found = getattr(data, "ignore_index", None)
        if found is not None and found != self.hparams.ignore_index:
            raise ConfigError(
                f"model.init_args.ignore_index={self.hparams.ignore_index} but data.init_args.ignore_index={found}; "
                "expected the same value in both"
            )

    def _items(self, batch: dict):
        """(image (B, 3, H, W), mask (B, H, W) or None, paths) groups of one batch: the whole batch when it is
        stacked, else one image at a time."""
        x, y, paths = batch["image"], batch.get("mask"), batch["path"]
        if isinstance(x, torch.Tensor) and (y is None or isinstance(y, torch.Tensor)):
            yield x, y, paths
            return
        for i, image in enumerate(x):
            yield image[None], None if y is None else y[i][None], paths[i : i + 1]

    def _evaluate(self, batch: dict, stage: str) -> None:
        """Validation: one sliding-window pass (loss and confusion); test: the configured scales and flip, and the
        first `num_visualize` overlays drawn."""
        hp = self.hparams
        for x, y, paths in self._items(batch):
            if stage == "val":
                logits = self.segment(x)
                self.log("val/loss", self.pixel_loss(logits, y), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
                self.val_confusion.update(logits.argmax(dim=1), y)
            else:
                pred = self.segment(x, hp.test_scales, hp.test_flip).argmax(dim=1)  # (B, H, W)
                self.test_confusion.update(pred, y)
                self._draw(paths, pred, y, "test_samples")

    def on_validation_epoch_end(self) -> None:
        scores = scores_from_confusion(self.val_confusion.compute())
        self.val_confusion.reset()
        self.log_dict({"val/mIoU": scores.miou, "val/pixel_acc": scores.pixel_acc, "val/mAcc": scores.macc},
                      prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._drawn = 0

    def on_test_epoch_end(self) -> None:
        scores = scores_from_confusion(self.test_confusion.compute())
        self.test_confusion.reset()
        self.log_dict({"test/mIoU": scores.miou, "test/pixel_acc": scores.pixel_acc, "test/mAcc": scores.macc})
        self._write_test_report(scores)

    @rank_zero_only
    def _write_test_report(self, scores) -> None:
        out = self.run_dir()
        iou_table(scores, self.class_names, out / "per_class_iou.csv")
        log.info("test report written to %s (per_class_iou.csv, test_samples/)", out)

    # -- prediction --
    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self._drawn = 0

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        hp = self.hparams
        out = self.run_dir() / "predictions"
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for x, _, paths in self._items(batch):
            pred = self.segment(x, hp.test_scales, hp.test_flip).argmax(dim=1)
            for path, p in zip(paths, pred.cpu().numpy()):
                target = self._unique_name(out, Path(path).stem)
                save_index_png(p, target)
                counts = np.bincount(p.ravel(), minlength=hp.num_classes) / p.size
                rows.append({"path": str(path), "mask": str(target),
                             "fractions": {self.class_names[k]: round(float(v), 6)
                                           for k, v in enumerate(counts) if v > 0}})
            self._draw(paths, pred, None, "predictions/overlays")
        return rows

    def write_predictions(self, rows: list[dict]) -> Path:
        path = super().write_predictions(rows)
        log.info("%d predicted masks written to %s (index PNGs; overlays/ for the first %d)", len(rows),
                 path.parent / "predictions", self.hparams.num_visualize)
        return path

    # -- pictures --
    @staticmethod
    def _unique_name(folder: Path, stem: str) -> Path:
        target, i = folder / f"{stem}.png", 1
        while target.exists():
            target, i = folder / f"{stem}_{i}.png", i + 1
        return target

    def _draw(self, paths: list[str], pred: torch.Tensor, target: torch.Tensor | None, folder: str) -> None:
        """For the first `num_visualize` images (rank 0): the coloured predicted mask, and the image | ground
        truth overlay (when known) | prediction overlay side by side."""
        if self.global_rank != 0 or self._drawn >= self.hparams.num_visualize:
            return
        out = self.run_dir() / folder
        out.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(paths):
            if self._drawn >= self.hparams.num_visualize:
                break
            image = np.asarray(Image.open(path).convert("RGB"))
            p = _fit(pred[i].cpu().numpy(), image.shape[:2])
            name = f"{self._drawn:03d}_{Path(path).stem}"
            Image.fromarray(colorize(p)).save(out / f"{name}_mask.png")
            panels = [image]
            if target is not None:
                panels.append(overlay(image, _fit(target[i].cpu().numpy(), image.shape[:2]),
                                      ignore_index=self.hparams.ignore_index))
            panels.append(overlay(image, p))
            save_panels(panels, out / f"{name}_overlay.png")
            self._drawn += 1

    # -- optimisation --
    def explainers(self) -> dict:
        from ..explain.tasks import explain_segmentation

        return {"rollout": explain_segmentation}

    def build_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.hparams.lr, momentum=self.hparams.momentum)
        return super().build_optimizer(groups)

    def lr_lambda(self, warmup: int, total: int):
        hp = self.hparams
        if hp.schedule == "cosine":
            return super().lr_lambda(max(1, warmup), total)
        return functools.partial(warmup_poly, warmup_steps=warmup, total_steps=total, power=hp.poly_power,
                                 min_lr_ratio=hp.min_lr_ratio)


def warmup_poly(step: int, warmup_steps: int, total_steps: int, power: float = 0.9, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr: linear warm-up, then `(1 - progress) ** power` down to `min_lr_ratio`
    (the "poly" schedule of DeepLab and Segmenter)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return max(min_lr_ratio, (1.0 - progress) ** power)


def _fit(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A label map resized (nearest) to (H, W) when an eval transform changed the image's size."""
    if mask.shape == tuple(hw):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((hw[1], hw[0]), Image.NEAREST))


def _check_hparams(h) -> None:
    if h.class_weights is not None and len(h.class_weights) != h.num_classes:
        raise ConfigError(f"model.class_weights has {len(h.class_weights)} values; "
                          f"expected num_classes={h.num_classes}")
    if h.class_names is not None and len(h.class_names) != h.num_classes:
        raise ConfigError(f"model.class_names has {len(h.class_names)} names; expected num_classes={h.num_classes}")
    if not 0 <= h.ignore_index <= 255 and h.ignore_index != -100:
        raise ConfigError(f"model.ignore_index={h.ignore_index}; expected a mask value in 0..255 (usually 255)")
    if not h.test_scales or min(h.test_scales) <= 0:
        raise ConfigError(f"model.test_scales={list(h.test_scales)}; expected positive scale factors, e.g. [1.0]")
    for name in ("optimizer", "schedule"):
        allowed = {"optimizer": ("adamw", "sgd"), "schedule": ("cosine", "poly")}[name]
        if h[name] not in allowed:
            raise ConfigError(f"model.{name}={h[name]!r}; expected one of {', '.join(allowed)}")
    if h.slide_stride is not None and h.slide_stride < 1:
        raise ConfigError(f"model.slide_stride={h.slide_stride}; expected a positive number of pixels or null")
