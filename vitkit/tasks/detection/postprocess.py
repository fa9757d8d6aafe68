"""From a detector's outputs to detections: the top-k (query, class) pairs as boxes in each original image's pixels."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert

from .criterion import Target


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
        box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                           box[:, 3].clamp(0, h)], 1)
        keep = scores[b] > score_threshold
        out.append({"boxes": box[keep], "scores": scores[b][keep], "labels": labels[b][keep]})
    return out
