"""DETR's set loss (Carion et al. 2020): CE with a no-object weight + L1 + GIoU over Hungarian-matched queries, on
every decoder layer, the encoder proposals, the one-to-many heads (Co-DETR) and the denoising queries (DN-DETR)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from ..matcher import HungarianMatcher

Target = dict[str, Any]


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

    def layer_losses(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[Target],
                     num_boxes: float) -> dict[str, torch.Tensor]:
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
        # (B, N, K+1), (B, N, 4), (N, 2)
        logits, boxes, centres = enc["pred_logits"].float(), enc["pred_boxes"].float(), enc["centres"]
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
        giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"),
                                        reduction="sum")
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
