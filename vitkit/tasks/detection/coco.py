"""COCO results and evaluation: results entries with the dataset's category ids, pycocotools' COCOeval of a
results file, and its 12-line summary table."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch
from torchvision.ops import box_convert

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


def coco_results(preds: list[dict[str, torch.Tensor]], image_ids: list[int], category_ids: list[int]) -> list[dict]:
    """COCO results entries {image_id, category_id, bbox xywh, score} from `postprocess` output; bbox values are
    the float32 numbers the metric saw, so re-evaluating the file gives the same numbers."""
    rows = []
    for p, image_id in zip(preds, image_ids):
        xywh = box_convert(p["boxes"].detach().cpu().float(), "xyxy", "xywh").tolist()
        for box, score, label in zip(xywh, p["scores"].tolist(), p["labels"].tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box,
                         "score": score})
    return rows


def coco_evaluate(gt_file: str | Path, results: list[dict] | str | Path,
                  image_ids: list[int] | None = None) -> dict[str, float]:
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
