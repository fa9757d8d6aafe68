"""The object detection LightningModule: set-prediction training of DETR-style and YOLOS detectors (Carion et al. 2020;
Fang et al. 2021), COCO mAP through torchmetrics (pycocotools / faster-coco-eval), a COCO results file with the
dataset's category ids, and box drawings."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_only
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from ...errors import ConfigError
from ...models import create_model
from ...viz import draw_detections
from ..base import VitkitTask
from ..finetune import WeightEMA
from ..matcher import HungarianMatcher
from .coco import COCO_KEYS, coco_results, coco_table
from .criterion import SetCriterion, Target
from .postprocess import postprocess

log = logging.getLogger("vitkit")


# ---------------------------------------------------------------------------------------------- task
class ObjectDetector(WeightEMA, VitkitTask):
    """Trains and evaluates a registered detector (`detr_vit_*`, `yolos_*`; `vitkit.list_models(family="detection")`).

    Batches are `(images, targets)` from `vitkit.data.DetectionDataModule`. Validation and test log
    torchmetrics' COCO numbers as `val/map`, `val/map_50`, ..., `test/mar_100`; `validate`/`test` write
    `coco_results.json` (COCO results format, the dataset's image and category ids) to the run folder, `test`
    prints pycocotools' summary table, and `test`/`predict` draw boxes on a sample of images
    (`detections/*.png`); `predict` writes `predictions.json`.

    Args:
        model: registered detector name.
        num_classes: object classes (linked from the data module).
        img_size: input size (linked from the data module).
        model_kwargs: further keyword arguments of the model (depth, num_queries, dn_groups, ...).
        pretrained: checkpoint for the model's `load_pretrained`: a ViT checkpoint initialises the encoder;
            for YOLOS, a transformers YolosForObjectDetection folder or file loads everything.
        class_names: names for drawings and predictions (linked from the data module).
        lr: peak learning rate of the head (AdamW, warm-up + cosine).
        encoder_lr_scale: the encoder's learning rate relative to `lr` (DETR: 0.1 for a pretrained backbone).
        weight_decay: AdamW weight decay (not on norms, biases, tokens, position embeddings, anchors).
        warmup_epochs: linear warm-up in epochs (fractions allowed).
        warmup_steps: linear warm-up length in optimiser steps instead (wins when set).
        min_lr_ratio: final learning rate as a fraction of the peak.
        cost_class, cost_bbox, cost_giou: Hungarian matching costs (DETR: 1, 5, 2).
        ce_weight, bbox_weight, giou_weight: loss weights (DETR: 1, 5, 2).
        eos_coef: weight of the "no object" class in the CE loss (DETR: 0.1).
        ema_decay: keep an exponential moving average of the weights (timm ModelEmaV3, decay warmed up from 0
            over the first steps; None: off); validation, test and predict use it, checkpoints store it under
            `ema_state_dict`. Short schedules gain most from it.
        top_k: detections kept per image (COCO evaluates at most 100).
        score_threshold: detections at or below this score are dropped before evaluation and export.
        display_threshold: minimum score of the boxes drawn and written by `predict`.
        num_draw: images drawn per `test`/`predict` run.
        map_backend: COCO evaluation backend of torchmetrics' MeanAveragePrecision.
        compile: ``torch.compile`` the model (and its EMA copy) in place; checkpoints load compiled or not.
        compile_backend: the ``torch.compile`` backend ("inductor", "aot_eager", "eager", ...).
    """

    monitor = "val/map"
    monitor_mode = "max"
    runtime_hparams = ("top_k", "score_threshold", "display_threshold", "num_draw", "map_backend")

    def __init__(
        self,
        model: str = "detr_vit_nano_patch8_64",
        num_classes: int = 4,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        class_names: list[str] | None = None,
        lr: float = 1e-4,
        encoder_lr_scale: float = 0.1,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.01,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        ce_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        eos_coef: float = 0.1,
        ema_decay: float | None = None,
        top_k: int = 100,
        score_threshold: float = 0.0,
        display_threshold: float = 0.3,
        num_draw: int = 16,
        map_backend: Literal["faster_coco_eval", "pycocotools"] = "faster_coco_eval",
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        # evaluation/display settings stay out of the checkpoint's hyper-parameters, so that `test`/`predict`
        # with --ckpt_path take them from the command line rather than from the training run
        self.save_hyperparameters(ignore=list(self.runtime_hparams))
        self.top_k, self.score_threshold, self.display_threshold, self.num_draw = (
            top_k, score_threshold, display_threshold, num_draw
        )
        self.map_backend = map_backend
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} names; expected num_classes={num_classes}")
        if map_backend not in ("faster_coco_eval", "pycocotools"):
            raise ConfigError(f"model.map_backend: found {map_backend!r}; expected 'faster_coco_eval' or 'pycocotools'")
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        self.model = self.build_model(create_model, repr(model), model, num_classes=num_classes, **kwargs)
        if not hasattr(self.model, "load_pretrained") or not hasattr(self.model, "img_size"):
            raise ConfigError(f"model.init_args.model: {model!r} is not a detector; "
                              f"expected one of {', '.join(_detectors())}")
        if pretrained is not None:
            log.info("%s", self.model.load_pretrained(pretrained))
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.criterion = SetCriterion(num_classes, HungarianMatcher(cost_class, cost_bbox, cost_giou), eos_coef,
                                      ce_weight, bbox_weight, giou_weight)
        self.init_ema(ema_decay, warmup=True)  # the decay ramps up: the average does not start from init
        self.maybe_compile(compile, compile_backend, self.model, self.ema.module if self.ema is not None else None)
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=map_backend)
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=map_backend)
        self._results: list[dict] = []
        self._drawn: list[tuple] = []

    def forward(self, images: torch.Tensor, targets: list[Target] | None = None) -> dict:
        return self.net(images, targets)

    # -- training --
    def loss(self, batch) -> dict[str, torch.Tensor]:
        """DETR's set loss: the total and its class, L1-box and GIoU parts."""
        images, targets = batch
        losses = self.criterion(self(images, targets), targets, self._num_boxes(targets))
        return {k: losses[k] for k in ("loss", "ce", "bbox", "giou")}

    def _num_boxes(self, targets: list[Target]) -> float:
        """Target boxes per process, averaged over processes (DETR normalises the box losses by it)."""
        n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            n = self.all_gather(n).float().mean()
        return max(1.0, float(n))

    # -- evaluation --
    def _evaluate(self, batch, stage: str) -> None:
        images, targets = batch
        metric = self.val_map if stage == "val" else self.test_map
        out = self(images)
        self.log(f"{stage}/loss", self.criterion(out, targets)["loss"], sync_dist=True, batch_size=len(targets))
        preds = self.predict_boxes(out, targets, images.shape[-1])
        metric.update(preds, [_eval_target(t) for t in targets])
        if self._exporting():
            self._results += coco_results(preds, [t["image_id"] for t in targets], self._category_ids())
        if stage == "test":
            self._keep_for_drawing(targets, preds, with_gt=True)

    def predict_boxes(self, outputs: dict, targets: list[Target], canvas: int) -> list[dict[str, torch.Tensor]]:
        return postprocess(outputs["pred_logits"], outputs["pred_boxes"], targets, canvas, self.top_k,
                           self.score_threshold)

    def on_validation_epoch_start(self) -> None:
        self._results = []

    def on_test_epoch_start(self) -> None:
        self._results, self._drawn = [], []

    def on_validation_epoch_end(self) -> None:
        self._log_map("val", self.val_map)
        if self._exporting():
            self._write_results()

    def on_test_epoch_end(self) -> None:
        stats = self._log_map("test", self.test_map)
        self._write_results()
        self._print_table(stats)
        self._draw("test")

    def _log_map(self, stage: str, metric: MeanAveragePrecision) -> dict[str, float]:
        result = metric.compute()
        metric.reset()
        stats = {k: float(result[k]) for k in COCO_KEYS}
        for k, v in stats.items():  # torchmetrics computed over all processes already
            self.log(f"{stage}/{k}", v, prog_bar=k in ("map", "map_50"))
        return stats

    def _exporting(self) -> bool:
        """Results files are written by `validate` and `test`, not by the validation passes during `fit`."""
        return self.trainer is not None and self.trainer.state.fn in ("validate", "test")

    def _category_ids(self) -> list[int]:
        ids = self.dataset_category_ids()
        return ids if ids is not None else list(range(self.hparams.num_classes))

    def dataset_category_ids(self) -> list[int] | None:
        """The dataset's category id of each label: the attached data module's, else the ones saved in the checkpoint
        this task was loaded from (what `vitkit export` / `serve` use); None when neither is known."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        ids = getattr(dm, "category_ids", None)
        if ids is None:
            ids = getattr(self, "_saved_category_ids", None)
        return None if ids is None else [int(i) for i in ids]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        ids = self.dataset_category_ids()
        if ids is not None:  # COCO ids are sparse (1..90), the shapes ones start at 1: a label is not its id
            checkpoint["category_ids"] = ids

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._saved_category_ids = checkpoint.get("category_ids")

    def _write_results(self) -> None:
        path = self.output_path("coco_results.json")
        path.write_text(json.dumps(self._results))
        log.info("%d detections written to %s (COCO results format)", len(self._results), path)

    @rank_zero_only
    def _print_table(self, stats: dict[str, float]) -> None:
        table = coco_table(stats)
        print(f"COCO bbox evaluation ({self.map_backend}):\n{table}")
        (self.run_dir() / "coco_eval.txt").write_text(table + "\n")

    # -- prediction --
    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        images, targets = batch
        preds = self.predict_boxes(self(images), targets, images.shape[-1])
        self._keep_for_drawing(targets, preds, with_gt=False)
        thr, category_ids = self.display_threshold, self._category_ids()
        rows = []
        for t, p in zip(targets, preds):
            keep = p["scores"] >= thr
            xywh = box_convert(p["boxes"][keep].cpu(), "xyxy", "xywh").tolist()
            rows.append({"path": t["path"], "detections": [
                {"label": self.class_names[c], "category_id": category_ids[c], "score": round(s, 5),
                 "bbox": [round(v, 2) for v in b]}
                for b, s, c in zip(xywh, p["scores"][keep].tolist(), p["labels"][keep].tolist())]})
        return rows

    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self._drawn = []

    def write_predictions(self, rows: list[dict]) -> Path:
        path = super().write_predictions(rows)
        self._draw("predict")
        return path

    # -- drawings --
    def _keep_for_drawing(self, targets: list[Target], preds: list[dict], with_gt: bool) -> None:
        for t, p in zip(targets, preds):
            if len(self._drawn) >= self.num_draw:
                return
            keep = p["scores"] >= self.display_threshold
            gt = t["eval_boxes"] if with_gt else None
            self._drawn.append((t["path"], p["boxes"][keep].cpu(), p["scores"][keep].cpu(), p["labels"][keep].cpu(),
                                gt))

    @rank_zero_only
    def _draw(self, stage: str) -> None:
        if not self._drawn:
            return
        folder = self.run_dir() / "detections"
        folder.mkdir(exist_ok=True)
        for i, (path, boxes, scores, labels, gt) in enumerate(self._drawn):
            draw_detections(path, boxes, scores, [self.class_names[c] for c in labels.tolist()], gt,
                            folder / f"{i:03d}_{Path(path).stem}.png")
        log.info("%s: boxes drawn on %d images in %s", stage, len(self._drawn), folder)

    # -- optimisation --
    def explainers(self) -> dict:
        from ...explain.tasks import explain_detection

        return {"cross": explain_detection}

    def param_groups(self) -> list[dict]:
        """Four groups: encoder / rest x decayed / not decayed (1-d tensors, biases, tokens, positions)."""
        hp = self.hparams
        skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                key = (name.startswith("encoder."), p.ndim > 1 and name not in skip)
                groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr": hp.lr * (hp.encoder_lr_scale if enc else 1.0),
                 "weight_decay": hp.weight_decay if decay else 0.0}
                for (enc, decay), ps in groups.items()]


def _eval_target(t: Target) -> dict[str, torch.Tensor]:
    """The ground truth torchmetrics compares against: every object in original pixels, crowd flags, areas."""
    return {"boxes": t["eval_boxes"], "labels": t["eval_labels"], "iscrowd": t["iscrowd"], "area": t["area"]}


def _detectors() -> list[str]:
    from ...models import list_models

    return list_models(family="detection")
