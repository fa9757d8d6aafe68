"""Image classification task: a registered vitkit encoder trained with label-smoothed cross-entropy,
AdamW and warm-up + cosine (the DeiT recipe, Touvron et al. 2021), evaluated with top-1/top-k accuracy;
fine-tuning options (freezing, Mixup/CutMix, weight EMA, gradient checkpointing, torch.compile) from YAML."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from ..errors import ConfigError
from ..models import create_model
from .base import GalleryItem, VitkitTask
from .finetune import BatchMixer, WeightEMA, freeze_
from .reports import per_class_table, save_confusion_matrix

log = logging.getLogger("vitkit")


class ImageClassifier(WeightEMA, VitkitTask):
    """Trains any registered vitkit model (`vitkit.list_models()`) as an image classifier.

    Args:
        model: registered model name, e.g. ``vit_tiny_patch4_32``.
        num_classes: number of classes (linked from the data module by the CLI).
        img_size: input size (linked from the data module by the CLI); None keeps the model's default.
        model_kwargs: further keyword arguments for the model (depth, drop_path_rate, global_pool, ...).
        pretrained: checkpoint file (timm, torchvision or transformers ViT) to start from; position
            embeddings are resampled to ``img_size`` and a head of another class count is replaced.
        reset_head: with ``pretrained``, start the classifier afresh even when the checkpoint's head fits
            (transfer to another task with the same number of classes).
        class_names: names shown in predictions and reports (linked from the data module).
        lr: peak learning rate after warm-up.
        weight_decay: AdamW weight decay (never applied to norms, biases, position/class tokens).
        betas: AdamW betas.
        layer_decay: layer-wise learning-rate decay factor (None: off).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        warmup_steps: linear warm-up length in optimiser steps instead (wins when set).
        min_lr_ratio: final learning rate as a fraction of ``lr`` at the end of the cosine.
        label_smoothing: cross-entropy label smoothing.
        top_k: how many labels ``predict`` returns per image, and the k of ``acc_top5``-style accuracy.
        freeze: "none" trains everything; "encoder" is a linear probe (only ``head`` and ``fc_norm`` train);
            an int N freezes the patch/position embeddings, class/register tokens and the first N blocks.
            Frozen parameters get ``requires_grad=False`` and stay out of the optimiser.
        mixup: Mixup alpha (0: off); targets become soft and the loss soft-target cross-entropy.
        cutmix: CutMix alpha (0: off); with both on, timm's Mixup switches between them per batch.
        mix_prob: probability that a training batch is mixed at all (when ``mixup`` or ``cutmix`` is on).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.9998; None: off),
            updated after every optimiser step; validation, test, predict and ``eval()`` forwards use it, and
            checkpoints store it under ``ema_state_dict``.
        grad_checkpointing: recompute block activations in backward (less memory, ~30% slower).
        compile: ``torch.compile`` the model in place (state-dict keys unchanged, so checkpoints load either way).
        compile_backend: the ``torch.compile`` backend ("inductor", "aot_eager", "eager", ...).
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        model: str = "vit_tiny_patch4_32",
        num_classes: int = 10,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        reset_head: bool = False,
        class_names: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = None,
        warmup_epochs: float = 5.0,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        top_k: int = 5,
        freeze: Literal["none", "encoder"] | int = "none",
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        ema_decay: float | None = None,
        grad_checkpointing: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} names; expected num_classes={num_classes}")
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        self.model = self.build_model(create_model, repr(model), model, pretrained=pretrained, reset_head=reset_head,
                                      num_classes=num_classes, **kwargs)
        if not hasattr(self.model, "forward_head"):  # e.g. a detector's name, or a checkpoint of another task
            raise ConfigError(f"model.init_args.model: {model!r} builds a {type(self.model).__name__}, not an image "
                              "classifier; expected a ViT from vitkit.list_models() (other tasks have their own class)")
        self.frozen = freeze_(self.model, freeze)
        self.model.set_grad_checkpointing(grad_checkpointing)
        self.mixer = (BatchMixer(mixup, cutmix, mix_prob, label_smoothing, num_classes) if mixup > 0 or cutmix > 0
                      else None)
        self.soft_ce = SoftTargetCrossEntropy()
        self.init_ema(ema_decay)
        self.maybe_compile(compile, compile_backend, self.model, self.ema.module if self.ema is not None else None)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.k = min(top_k, num_classes)
        metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro"),
             f"acc_top{self.k}": MulticlassAccuracy(num_classes, top_k=self.k, average="micro")}
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- training and evaluation --
    def loss(self, batch) -> torch.Tensor:
        return self.training_loss(*batch)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy, or soft-target cross-entropy on a Mixup/CutMix batch."""
        if self.mixer is None:
            return F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        x, target = self.mixer(x, y)  # (B, C, H, W), (B, K) soft targets
        return self.soft_ce(self(x), target)

    def _evaluate(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=stage == "val", sync_dist=True)
        metrics.update(logits, y)
        self.log_dict(metrics, prog_bar=stage == "val")
        if stage == "test":
            self.test_confusion.update(logits, y)
        return logits  # for callbacks (the test gallery)

    def gallery_items(self, batch, outputs: torch.Tensor):
        """Each test image scored by the probability of its true class."""
        return classification_items(outputs, batch, self.class_names)

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute().cpu()
        self.test_confusion.reset()
        self._write_test_report(matrix, self.run_dir())  # asked on every rank: under DDP all agree on the folder

    @rank_zero_only
    def _write_test_report(self, matrix: torch.Tensor, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        per_class_table(matrix, self.class_names, out / "per_class_accuracy.csv")
        save_confusion_matrix(matrix, self.class_names, out / "confusion_matrix.png")
        log.info("test report written to %s (confusion_matrix.png, per_class_accuracy.csv)", out)

    # -- prediction --
    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        x, paths = batch
        probs = self(x).softmax(dim=-1)
        top_p, top_i = probs.topk(self.k, dim=-1)
        return [
            {"path": str(p), "labels": [self.class_names[i] for i in idx], "probs": [round(v, 6) for v in pr]}
            for p, idx, pr in zip(paths, top_i.tolist(), top_p.tolist())
        ]

    def prediction_table(self, rows: list[dict]) -> list[dict]:
        """One CSV row per image: path, label_1, prob_1, ..., label_k, prob_k."""
        table = []
        for r in rows:
            row = {"path": r["path"]}
            for i, (label, prob) in enumerate(zip(r["labels"], r["probs"]), 1):
                row[f"label_{i}"], row[f"prob_{i}"] = label, prob
            table.append(row)
        return table

    def explainers(self) -> dict:
        from ..explain.tasks import explain_classification

        return dict.fromkeys(("rollout", "attention", "grad"), explain_classification)


def classification_items(outputs, batch, class_names: list[str] | None) -> list[GalleryItem] | None:
    """Score each test image by the probability of its true class; None if this is not a classification batch."""
    if (
        not isinstance(outputs, torch.Tensor)
        or outputs.ndim != 2
        or not isinstance(batch, (list, tuple))
        or len(batch) != 2
    ):
        return None
    x, y = batch
    if (
        not isinstance(y, torch.Tensor)
        or y.ndim != 1
        or y.dtype not in (torch.int64, torch.int32)
        or len(y) != len(outputs)
    ):
        return None
    probs = outputs.detach().float().softmax(dim=-1)
    pred = probs.argmax(dim=-1)
    p_true = probs.gather(1, y[:, None]).squeeze(1)
    names = class_names or [str(i) for i in range(outputs.shape[1])]
    return [
        (float(p_true[i]), x[i], f"true {names[int(y[i])]}\npred {names[int(pred[i])]} {float(probs[i, pred[i]]):.0%}")
        for i in range(len(y))
    ]
