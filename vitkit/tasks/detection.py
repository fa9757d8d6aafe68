"""Object detection task: set-prediction training of DETR-style and YOLOS detectors (Carion et al. 2020; Fang
et al. 2021) with Hungarian matching, CE (no-object weight) + L1 + GIoU losses on every decoder layer and on
denoising queries (DN-DETR), top-k postprocessing to image coordinates, COCO mAP through torchmetrics
(pycocotools / faster-coco-eval), a COCO results file with the dataset's category ids, and box drawings."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..errors import ConfigError
from ..models import create_model
from .base import VitkitTask
from .finetune import WeightEMA
from .matcher import HungarianMatcher
from .optim import adamw, schedule_steps, warmup_cosine_scheduler

log = logging.getLogger("vitkit")

Target = dict[str, Any]
# torchmetrics' names of COCOeval's 12 summary numbers, in pycocotools' order
COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
_COCO_ROWS = [  # (AP or AR, IoU, area, maxDets) of each summary line, as pycocotools prints them
    ("Average Precision  (AP)", "0.50:0.95", "all", 100), ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100), ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100), ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1), ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100), ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100), ("Average Recall     (AR)", "0.50:0.95", "large", 100),
]


# ---------------------------------------------------------------------------------------------- loss
class SetCriterion(nn.Module):
    """DETR's set loss: match queries to targets, then CE over all queries (unmatched ones -> "no object",
    weighted `eos_coef`), L1 and GIoU over matched boxes, normalised by the number of target boxes; the
    same on every auxiliary layer, and on denoising queries against the box each was noised from."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, eos_coef: float = 0.1, ce_weight: float = 1.0,
                 bbox_weight: float = 5.0, giou_weight: float = 2.0) -> None:
        super().__init__()
        self.num_classes, self.matcher = num_classes, matcher
        self.weights = {"ce": ce_weight, "bbox": bbox_weight, "giou": giou_weight}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, outputs: dict, targets: list[Target], num_boxes: float | None = None) -> dict[str, torch.Tensor]:
        """Returns "loss" (weighted sum over all layers) and the final layer's "ce", "bbox", "giou"."""
        if num_boxes is None:
            num_boxes = max(1.0, float(sum(len(t["labels"]) for t in targets)))
        final = self.layer_losses(outputs["pred_logits"], outputs["pred_boxes"], targets, num_boxes)
        extra = outputs.get("aux_outputs", []) + ([outputs["enc_outputs"]] if "enc_outputs" in outputs else [])
        terms = [final] + [self.layer_losses(a["pred_logits"], a["pred_boxes"], targets, num_boxes) for a in extra]
        if "enc_outputs" in outputs and "dense" in outputs["enc_outputs"]:
            terms.append(self.dense_losses(outputs["enc_outputs"]["dense"], targets))
        if outputs.get("dn") is not None:
            terms += self.denoising_losses(outputs["dn"], num_boxes)
        total = sum(self.weights[k] * term[k] for term in terms for k in self.weights)
        return {"loss": total, **final}

    def layer_losses(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[Target], num_boxes: float) -> dict[str, torch.Tensor]:
        logits, boxes = logits.float(), boxes.float()  # losses in float32 under bf16/fp16 autocast
        matches = self.matcher(logits, boxes, targets)
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(logits.device)
        query = torch.cat([q for q, _ in matches]).to(logits.device)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch, query] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, matches)]).to(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=self.class_weight)  # (B, K+1, Q) vs (B, Q)
        pred = boxes[batch, query]  # (M, 4) matched predictions
        gt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, matches)]).to(pred)
        return {"ce": ce, **self.box_losses(pred, gt, num_boxes)}

    def dense_losses(self, enc: dict, targets: list[Target]) -> dict[str, torch.Tensor]:
        """One-to-many loss of the auxiliary token heads (the dense assignment of Co-DETR, Zong et al. 2023,
        with FCOS's centre rule): a token whose cell centre lies inside a target box is a positive for it (the
        smallest such box); a box holding no centre takes the token nearest its own; all other tokens are
        "no object". Many positives per object give the encoder a dense training signal from the first step."""
        logits, boxes, centres = enc["pred_logits"].float(), enc["pred_boxes"].float(), enc["centres"]  # (B, N, K+1), (B, N, 4), (N, 2)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        pred, gt = [], []
        for b, t in enumerate(targets):
            owner = _dense_owner(centres, t["boxes"].to(centres))  # (N,) target index or -1
            pos = owner >= 0
            classes[b, pos] = t["labels"].to(logits.device)[owner[pos]]
            pred.append(boxes[b, pos])
            gt.append(t["boxes"].to(boxes)[owner[pos]])
        ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=self.class_weight)
        pred, gt = torch.cat(pred), torch.cat(gt)
        return {"ce": ce, **self.box_losses(pred, gt, max(1.0, float(len(gt))))}

    def box_losses(self, pred: torch.Tensor, gt: torch.Tensor, num_boxes: float) -> dict[str, torch.Tensor]:
        l1 = F.l1_loss(pred, gt, reduction="sum") / num_boxes
        giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"), reduction="sum")
        return {"bbox": l1, "giou": giou / num_boxes}

    def denoising_losses(self, dn: dict, num_boxes: float) -> list[dict[str, torch.Tensor]]:
        """Per layer: CE of each valid denoising query against its true label, L1 + GIoU against its true box."""
        valid, groups = dn["valid"], dn["groups"]  # (B, G*pad), G
        out = []
        for logits, boxes in zip(dn["pred_logits"], dn["pred_boxes"]):  # per layer: (B, G*pad, K+1), (B, G*pad, 4)
            ce = F.cross_entropy(logits[valid].float(), dn["labels"][valid])
            out.append({"ce": ce, **self.box_losses(boxes[valid].float(), dn["boxes"][valid], num_boxes * groups)})
        return out


def _dense_owner(centres: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """For each of N cell centres (N, 2), the index of the smallest target box (n, 4 cxcywh) containing it;
    a box left without any token takes the one nearest its centre. -1 where none."""
    owner = torch.full((len(centres),), -1, dtype=torch.int64, device=centres.device)
    if len(boxes) == 0:
        return owner
    half = boxes[:, 2:] / 2
    inside = ((centres[:, None] - boxes[None, :, :2]).abs() <= half[None]).all(-1)  # (N, n)
    area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(inside)
    area = torch.where(inside, area, torch.full_like(area, float("inf")))
    best = area.argmin(1)
    owner[inside.any(1)] = best[inside.any(1)]
    for j in range(len(boxes)):  # a box holding no (free) centre takes the token nearest its centre
        if not (owner == j).any():
            owner[torch.cdist(boxes[j : j + 1, :2], centres).argmin()] = j
    return owner


# ---------------------------------------------------------------------------------------------- postprocess
def postprocess(logits: torch.Tensor, boxes: torch.Tensor, targets: list[Target], canvas: int, top_k: int = 100,
                score_threshold: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """Top-k (query, class) pairs by probability -> boxes xyxy in each original image's pixels.

    Args:
        logits: (B, Q, K+1) with "no object" last; boxes: (B, Q, 4) normalised cxcywh on the square canvas.
        targets: per image "scale" (sx, sy: canvas pixels per image pixel) and "orig_size" (h, w).
        canvas: side of the canvas in pixels.
    Returns:
        per image {"boxes": (k, 4) float32 xyxy, "scores": (k,), "labels": (k,) int64}, by descending score.
    """
    prob = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    K = prob.shape[-1]
    scores, index = prob.flatten(1).topk(min(top_k, prob.shape[1] * K), dim=1)  # (B, k)
    query, labels = index // K, index % K
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * canvas  # (B, Q, 4) canvas pixels
    xyxy = xyxy.gather(1, query[..., None].expand(-1, -1, 4))
    out = []
    for b, t in enumerate(targets):
        sx, sy = t["scale"]
        h, w = t["orig_size"]
        box = xyxy[b] / xyxy.new_tensor([sx, sy, sx, sy])
        box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w), box[:, 3].clamp(0, h)], 1)
        keep = scores[b] > score_threshold
        out.append({"boxes": box[keep], "scores": scores[b][keep], "labels": labels[b][keep]})
    return out


def coco_results(preds: list[dict[str, torch.Tensor]], image_ids: list[int], category_ids: list[int]) -> list[dict]:
    """COCO results entries {image_id, category_id, bbox xywh, score} from `postprocess` output; bbox values are
    the float32 numbers the metric saw, so re-evaluating the file gives the same numbers."""
    rows = []
    for p, image_id in zip(preds, image_ids):
        xywh = box_convert(p["boxes"].detach().cpu().float(), "xyxy", "xywh").tolist()
        for box, score, label in zip(xywh, p["scores"].tolist(), p["labels"].tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box, "score": score})
    return rows


def coco_evaluate(gt_file: str | Path, results: list[dict] | str | Path, image_ids: list[int] | None = None) -> dict[str, float]:
    """pycocotools COCOeval of a results list (or file) against a ground-truth file -> the 12 summary numbers
    under torchmetrics' names. An empty results list is evaluated as "no detections" (pycocotools' `loadRes`
    refuses it). `image_ids` restricts the evaluation to those images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not isinstance(results, list):
        results = json.loads(Path(results).read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(COCO_KEYS, (float(s) for s in ev.stats)))


def coco_table(stats: dict[str, float]) -> str:
    """The 12 lines of pycocotools' `COCOeval.summarize()` from torchmetrics-named numbers."""
    lines = []
    for (title, iou, area, dets), key in zip(_COCO_ROWS, COCO_KEYS):
        lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {float(stats[key]):0.3f}")
    return "\n".join(lines)


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
    ) -> None:
        super().__init__()
        # evaluation/display settings stay out of the checkpoint's hyper-parameters, so that `test`/`predict`
        # with --ckpt_path take them from the command line rather than from the training run
        self.save_hyperparameters(ignore=list(self.runtime_hparams))
        self.top_k, self.score_threshold, self.display_threshold, self.num_draw = top_k, score_threshold, display_threshold, num_draw
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
            raise ConfigError(f"model.init_args.model: {model!r} is not a detector; expected one of {', '.join(_detectors())}")
        if pretrained is not None:
            log.info("%s", self.model.load_pretrained(pretrained))
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.criterion = SetCriterion(num_classes, HungarianMatcher(cost_class, cost_bbox, cost_giou), eos_coef,
                                      ce_weight, bbox_weight, giou_weight)
        self.init_ema(ema_decay, warmup=True)  # the decay ramps up: the average does not start from init
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=map_backend)
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=map_backend)
        self._results: list[dict] = []
        self._drawn: list[tuple] = []
        self._predictions: list[dict] = []

    def forward(self, images: torch.Tensor, targets: list[Target] | None = None) -> dict:
        return self.net(images, targets)

    # -- training --
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.criterion(self(images, targets), targets, self._num_boxes(targets))
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log_dict({f"train/loss_{k}": losses[k] for k in ("ce", "bbox", "giou")})
        return losses["loss"]

    def _num_boxes(self, targets: list[Target]) -> float:
        """Target boxes per process, averaged over processes (DETR normalises the box losses by it)."""
        n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            n = self.all_gather(n).float().mean()
        return max(1.0, float(n))

    # -- evaluation --
    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_map)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_map)

    def _evaluate(self, batch, stage: str, metric: MeanAveragePrecision) -> None:
        images, targets = batch
        out = self(images)
        self.log(f"{stage}/loss", self.criterion(out, targets)["loss"], sync_dist=True, batch_size=len(targets))
        preds = self.predict_boxes(out, targets, images.shape[-1])
        metric.update(preds, [_eval_target(t) for t in targets])
        if self._exporting():
            self._results += coco_results(preds, [t["image_id"] for t in targets], self._category_ids())
        if stage == "test":
            self._keep_for_drawing(targets, preds, with_gt=True)

    def predict_boxes(self, outputs: dict, targets: list[Target], canvas: int) -> list[dict[str, torch.Tensor]]:
        return postprocess(outputs["pred_logits"], outputs["pred_boxes"], targets, canvas, self.top_k, self.score_threshold)

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
        ids = getattr(self.trainer.datamodule, "category_ids", None) if self.trainer is not None else None
        return list(ids) if ids is not None else list(range(self.hparams.num_classes))

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
        self._predictions += rows
        return rows

    def on_predict_epoch_start(self) -> None:
        self._predictions, self._drawn = [], []

    def on_predict_epoch_end(self) -> None:
        path = self.output_path("predictions.json")
        path.write_text(json.dumps(self._predictions, indent=1))
        log.info("detections for %d images written to %s", len(self._predictions), path)
        self._draw("predict")

    # -- drawings --
    def _keep_for_drawing(self, targets: list[Target], preds: list[dict], with_gt: bool) -> None:
        for t, p in zip(targets, preds):
            if len(self._drawn) >= self.num_draw:
                return
            keep = p["scores"] >= self.display_threshold
            gt = t["eval_boxes"] if with_gt else None
            self._drawn.append((t["path"], p["boxes"][keep].cpu(), p["scores"][keep].cpu(), p["labels"][keep].cpu(), gt))

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
        from ..explain.tasks import explain_detection

        return {"cross": explain_detection}

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = adamw(self.model, self._param_groups(), hp.lr)
        warmup, total = schedule_steps(self.trainer, hp.warmup_epochs)
        scheduler = warmup_cosine_scheduler(optimizer, warmup, total, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _param_groups(self) -> list[dict]:
        """Four groups: encoder / rest x decayed / not decayed (1-d tensors, biases, tokens, positions)."""
        hp = self.hparams
        skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                key = (name.startswith("encoder."), p.ndim > 1 and name not in skip)
                groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr": hp.lr * (hp.encoder_lr_scale if enc else 1.0), "weight_decay": hp.weight_decay if decay else 0.0}
                for (enc, decay), ps in groups.items()]


def _eval_target(t: Target) -> dict[str, torch.Tensor]:
    """The ground truth torchmetrics compares against: every object in original pixels, crowd flags, areas."""
    return {"boxes": t["eval_boxes"], "labels": t["eval_labels"], "iscrowd": t["iscrowd"], "area": t["area"]}


def _detectors() -> list[str]:
    from ..models import list_models

    return list_models(family="detection")


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
        image = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * s), round(image.shape[0] * s)), Image.NEAREST))
    canvas = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
    if gt_boxes is not None and len(gt_boxes):
        canvas = draw_bounding_boxes(canvas, gt_boxes.float() * s, colors="white", width=1)
    if len(boxes):
        labels = [f"{n} {v:.2f}" for n, v in zip(names, scores.tolist())]
        canvas = draw_bounding_boxes(canvas, boxes.float() * s, labels=labels, colors=[_color(n) for n in names], width=2)
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(out)
    return out


_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080"]


def _color(name: str) -> str:
    return _PALETTE[sum(map(ord, name)) % len(_PALETTE)]
