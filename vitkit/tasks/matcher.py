"""Hungarian matching of predicted and ground-truth boxes for set prediction (Carion et al. 2020, DETR):
a class + L1 + GIoU cost per (query, object) pair, solved per image with scipy's `linear_sum_assignment`."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

Match = tuple[torch.Tensor, torch.Tensor]  # (query indices, target indices), int64, equal length


class HungarianMatcher(nn.Module):
    """One-to-one assignment of each image's targets to queries at minimum total cost.

    cost = cost_class * (-p(target class)) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU(xyxy)).
    The cost matrix of the whole batch is computed in one go (B*Q x sum of targets); only the assignment
    runs per image. Defaults are DETR's (class 1, L1 5, GIoU 2).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0; expected at least one positive cost")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> list[Match]:
        """Match queries to targets.

        Args:
            logits: (B, Q, K+1) class logits, the last class being "no object".
            boxes: (B, Q, 4) predicted boxes, normalised cxcywh.
            targets: per image a dict with "labels" (n,) int64 and "boxes" (n, 4) normalised cxcywh.

        Returns:
            per image (query indices, target indices), both int64 of length min(Q, n), sorted by query.
        """
        B, Q = logits.shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(B)]
        cost = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), targets)  # (B*Q, sum n)
        cost = cost.view(B, Q, -1).cpu()
        matches = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            q, t = linear_sum_assignment(block[i].numpy())  # rows come back sorted
            matches.append((torch.as_tensor(q, dtype=torch.int64), torch.as_tensor(t, dtype=torch.int64)))
        return matches

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor,
                    targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """(N, K+1) logits and (N, 4) boxes against all targets of the batch -> (N, sum n) cost."""
        labels = torch.cat([t["labels"] for t in targets])
        gt = torch.cat([t["boxes"] for t in targets]).to(boxes.dtype)
        prob = logits.float().softmax(-1)  # (N, K+1)
        cost = -self.cost_class * prob[:, labels]
        cost = cost + self.cost_bbox * torch.cdist(boxes.float(), gt.float(), p=1)
        giou = generalized_box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"),
                                   box_convert(gt.float(), "cxcywh", "xyxy"))
        return cost - self.cost_giou * giou
