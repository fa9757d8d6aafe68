"""Visual question answering task: answer classification over fused image and question tokens (ViLT, Kim et al.
2021), scored with VQA accuracy overall and per answer type (Antol et al. 2015)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from ..errors import ConfigError
from .base import VitkitTask
from .text import TokenizerMixin

log = logging.getLogger("vitkit")


# ------------------------------------------------------------------------------------------ VQA
def vqa_score(answer: str, references: list[str]) -> float:
    """VQA accuracy of one answer (Antol et al. 2015): min(1, #references that agree / 3); with a single
    reference, exact match."""
    if not references:
        return 0.0
    if len(references) == 1:
        return float(answer == references[0])
    return min(1.0, sum(answer == r for r in references) / 3.0)


ANSWER_TYPES = ("yes_no", "number", "other")
_NUMBER_WORDS = frozenset("zero one two three four five six seven eight nine ten eleven twelve".split())


def answer_type(references: list[str]) -> str:
    """The VQA answer type of a question from its references' majority answer (Antol et al. 2015 report
    accuracy per type): ``yes_no``, ``number`` (digits or a number word) or ``other``."""
    if not references:
        return "other"
    top = Counter(references).most_common(1)[0][0]
    if top in ("yes", "no"):
        return "yes_no"
    return "number" if top.isdigit() or top in _NUMBER_WORDS else "other"


class VisualQA(TokenizerMixin, VitkitTask):
    """Visual question answering as answer classification (`VQATransformer`): label-smoothed cross-entropy
    over the training answers; ``vqa_acc`` (0..1) in validation/test, and per answer type (``vqa_acc_yes_no``,
    ``vqa_acc_number``, ``vqa_acc_other``, as the VQA benchmark reports); predict writes ``predictions.json``/``.csv``.

    Args:
        encoder: registered image encoder. encoder_kwargs: its keyword arguments.
        pretrained: checkpoint file for the encoder, or None. img_size: image side (linked).
        vocab_size: question vocabulary (linked). max_len: most question tokens (linked).
        pad_id: padding id (linked). bos_id, eos_id: the tokenizer's other special ids (linked, checked).
        num_classes: number of answers (linked). class_names: the answers (linked).
        fusion_kwargs: ``VQATransformer`` settings (fusion: joint|cross, dim, depth, num_heads, dropout, pos_embed).
        lr: peak learning rate. weight_decay: AdamW weight decay. betas: AdamW betas.
        warmup_steps: linear warm-up steps. min_lr_ratio: final lr fraction of the cosine.
        label_smoothing: cross-entropy label smoothing.
        freeze_encoder: train only the question embedding, fusion and head (the encoder stays as loaded, in
            eval mode: no dropout, BatchNorm statistics unchanged).
        compile: ``torch.compile`` the model in place for training.
    """

    batch_key = "images"
    monitor, monitor_mode = "val/vqa_acc", "max"

    def __init__(
        self,
        encoder: str = "vit_nano_patch4_32",
        encoder_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        img_size: int | None = None,
        vocab_size: int = 1000,
        max_len: int = 24,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        freeze_encoder: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} answers; expected num_classes={num_classes}")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        from ..models.captioner import VQATransformer

        kwargs = dict(vocab_size=vocab_size, num_answers=num_classes, encoder=encoder, img_size=img_size,
                      encoder_kwargs=encoder_kwargs, pretrained=pretrained, max_len=max_len, pad_id=pad_id,
                      **(fusion_kwargs or {}))
        self.model = self.build_model(VQATransformer, "the VQA model", **kwargs)
        if freeze_encoder:  # keep a pretrained encoder's features; only the question side and the fusion learn
            self.model.encoder.requires_grad_(False)
        self.maybe_compile(compile, compile_backend, self.model)
        self.val_acc, self.test_acc = MeanMetric(), MeanMetric()
        self.type_acc = nn.ModuleDict({f"{stage}_{t}": MeanMetric() for stage in ("val", "test") for t in ANSWER_TYPES})

    def train(self, mode: bool = True) -> VisualQA:
        """A frozen encoder stays in eval mode while the rest trains: its dropout is off and its BatchNorm
        statistics (a convolutional stem's) stay as loaded."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.model.encoder.eval()
        return self

    def forward(self, images: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.model(images, question)

    def loss(self, batch: dict) -> torch.Tensor:
        return self.answer_loss(self(batch["images"], batch["question"]), batch["label"])

    def answer_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the answers that are classes (-1: an answer outside the vocabulary)."""
        if not bool((labels >= 0).any()):  # no answer of this batch is a known class
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels, ignore_index=-1, label_smoothing=self.hparams.label_smoothing)

    def _answer(self, logits: torch.Tensor) -> tuple[list[str], list[float]]:
        probs = logits.float().softmax(dim=-1)
        p, idx = probs.max(dim=-1)
        return [self.class_names[i] for i in idx.tolist()], p.tolist()

    def _evaluate(self, batch: dict, stage: str) -> list[str]:
        metric = self.val_acc if stage == "val" else self.test_acc
        logits = self(batch["images"], batch["question"])
        self.log(f"{stage}/loss", self.answer_loss(logits, batch["label"]), batch_size=len(logits), sync_dist=True)
        answers, _ = self._answer(logits)
        scores = torch.tensor([vqa_score(a, r) for a, r in zip(answers, batch["answers"])], device=self.device)
        metric.update(scores)
        self.log(f"{stage}/vqa_acc", metric, prog_bar=stage == "val")
        types = [answer_type(r) for r in batch["answers"]]
        for t in ANSWER_TYPES:  # every rank logs every type (weight 0 where absent): NaN if the split has none
            by_type = self.type_acc[f"{stage}_{t}"]
            by_type.update(scores, weight=torch.tensor([float(k == t) for k in types], device=self.device))
            self.log(f"{stage}/vqa_acc_{t}", by_type)
        return answers

    def gallery_items(self, batch: dict, outputs: list[str]):
        """Best/worst test answers for the CLI's gallery, scored by VQA accuracy."""
        return [(vqa_score(a, r), img, f"{q}\n{a} (true: {r[0] if r else '?'})")
                for img, q, a, r in zip(batch["images"], batch["question_text"], outputs, batch["answers"])]

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        answers, probs = self._answer(self(batch["images"], batch["question"]))
        return [{"image": str(p), "question": q, "answer": a, "prob": round(pr, 6)}
                for p, q, a, pr in zip(batch["path"], batch["question_text"], answers, probs)]
