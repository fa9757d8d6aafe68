"""Object detection, split as DETR splits it: the task (`task.py`), the set loss (`criterion.py`), postprocessing
to image boxes (`postprocess.py`) and COCO results and evaluation (`coco.py`). The names importable from
`vitkit.tasks.detection` before the split still are (old configs, checkpoints and scripts keep working)."""
from ...viz import draw_detections
from .coco import COCO_KEYS, coco_evaluate, coco_results, coco_table
from .criterion import SetCriterion, Target, _dense_owner
from .postprocess import postprocess
from .task import ObjectDetector

__all__ = ["COCO_KEYS", "ObjectDetector", "SetCriterion", "Target", "_dense_owner", "coco_evaluate", "coco_results",
           "coco_table", "draw_detections", "postprocess"]
