"""Object detection data: COCO-format JSON + image folders (COCO 2017 or any dataset in that format), Pascal
VOC XML, and the embedded shapes scenes (written as a COCO-format dataset); albumentations with boxes.

Every image ends up letterboxed to `img_size` x `img_size` (longest side resized, padded bottom/right), so a
box maps back to the original image by one scale per axis. Batches are `(images, targets)`: float32
(B, 3, img_size, img_size) and one dict per image (see `DetectionDataset.__getitem__`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, DatasetNotFoundError, require
from .base import VitkitDataModule
from .detection_io import (  # noqa: F401  (the readers moved to detection_io; their old import path still works)
    BoxFixes,
    DetectionRecord,
    _annotation_fields,
    _check_files,
    _image_record,
    _set_objects,
    _short,
    _unlabelled,
    _voc_record,
    coco_categories,
    fix_box,
    load_json,
    read_coco,
    read_voc,
)
from .images import list_images, load_rgb
from .shapes import SHAPES, ShapesConfig, generate_shapes
from .transforms import make_transform

log = logging.getLogger("vitkit")

DatasetName = Literal["shapes", "coco", "voc"]
Split = Literal["train", "val", "test", "predict"]
_SPLITS = get_args(Split)
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_DEFAULTS = {  # dataset -> (root, split names, annotation file pattern, image folder pattern)
    "shapes": ("datasets/shapes", {"train": "train", "val": "val", "test": "test"},
               "annotations/instances_{split}.json", "{split}/images"),
    "coco": ("datasets/coco", {"train": "train2017", "val": "val2017", "test": "val2017"},
             "annotations/instances_{split}.json", "{split}"),
    "voc": ("datasets/VOCdevkit/VOC2012", {"train": "train", "val": "val", "test": "val"},
            "ImageSets/Main/{split}.txt", "JPEGImages"),
}


# ---------------------------------------------------------------------------------------------- transforms
def letterbox(
    image: np.ndarray, boxes: np.ndarray, size: int, fill: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Resize the longest side to `size`, pad bottom/right to a square with `fill`; boxes (n, 4) xyxy follow.
    Returns the canvas (size, size, 3), the boxes, and (sx, sy): canvas pixels per original pixel."""
    h, w = image.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = np.asarray(fill, np.uint8)
    canvas[:nh, :nw] = image
    sx, sy = nw / w, nh / h
    return canvas, boxes * np.asarray([sx, sy, sx, sy], np.float32), (sx, sy)


def default_train_transforms() -> list[A.BasicTransform]:
    """Flip, and a random zoom/shift of the whole image in place (a random resize + crop/pad, DETR-style)."""
    return [A.HorizontalFlip(p=0.5), A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), p=0.5)]


def build_box_transforms(
    spec: Sequence[dict] | None, min_visibility: float, field: str = "data.train_transforms"
) -> A.Compose:
    """Albumentations pipeline on (image, pascal_voc boxes, labels); boxes cut below `min_visibility` of their
    area are dropped. `spec` is a YAML list like `[{name: HorizontalFlip, p: 0.5}]`; None: the default."""
    if spec is None:
        steps = default_train_transforms()
    elif isinstance(spec, (str, dict)) or not isinstance(spec, Sequence):
        raise ConfigError(f"{field}: expected a list like [{{name: HorizontalFlip, p: 0.5}}]; found {spec!r}")
    else:
        steps = [make_transform(entry, where=f"{field}[{i}]") for i, entry in enumerate(spec)]
    params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True)
    return A.Compose(steps, bbox_params=params)


# ---------------------------------------------------------------------------------------------- dataset
class DetectionDataset(Dataset):
    """Records -> (image (3, S, S) float32 normalised, target dict), augmenting with `transform` when given."""

    def __init__(self, records: list[DetectionRecord], img_size: int, mean: Sequence[float], std: Sequence[float],
                 transform: A.Compose | None = None) -> None:
        self.records, self.img_size, self.transform = records, img_size, transform
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.fill = tuple(int(round(m * 255)) for m in mean)  # padding is 0 after normalisation

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Target keys: "boxes" (n, 4) normalised cxcywh on the canvas and "labels" (n,) of the objects to train
        on (no crowd); "image_id", "path", "orig_size" (h, w), "scale" (sx, sy canvas px per image px); and for
        evaluation in original pixels "eval_boxes" (m, 4) xyxy, "eval_labels", "iscrowd", "area" (all objects)."""
        rec = self.records[index]
        image = load_rgb(rec.path)
        if image.shape[:2] != (rec.height, rec.width):
            raise DataError(f"{rec.path}: image is {image.shape[1]}x{image.shape[0]}, its annotation says "
                            f"{rec.width}x{rec.height} (image id {rec.image_id}); expected the annotated size")
        keep = rec.iscrowd == 0
        boxes, labels = rec.boxes[keep], rec.labels[keep]
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            image, boxes, labels = (out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
                                    np.asarray(out["labels"], np.int64))
        canvas, boxes, scale = letterbox(image, boxes, self.img_size, self.fill)
        boxes = boxes.clip(0, self.img_size)
        ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # under a pixel after augmentation
        boxes, labels = torch.from_numpy(boxes[ok]), torch.from_numpy(labels[ok])
        cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / self.img_size
        x = (torch.from_numpy(canvas).permute(2, 0, 1).float() / 255 - self.mean) / self.std  # (H, W, 3) -> (3, H, W)
        target = {
            "boxes": cxcywh.float(), "labels": labels, "image_id": rec.image_id, "path": rec.path,
            "orig_size": (rec.height, rec.width), "scale": scale,
            "eval_boxes": torch.from_numpy(rec.boxes), "eval_labels": torch.from_numpy(rec.labels),
            "iscrowd": torch.from_numpy(rec.iscrowd), "area": torch.from_numpy(rec.area),
        }
        return x, target


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


# ---------------------------------------------------------------------------------------------- data module
class DetectionDataModule(VitkitDataModule):
    """Object detection data with COCO-style evaluation targets and readable errors.

    Args:
        dataset: "shapes" (default): the embedded procedural scenes (circle, square, triangle, star; 64 px),
            written as a COCO-format dataset under `root` on first use. "coco": COCO-format JSON + image folder
            (COCO 2017 or any dataset in that format). "voc": Pascal VOC (XML annotations, ImageSets lists).
        root: dataset folder; None: datasets/shapes, datasets/coco or datasets/VOCdevkit/VOC2012.
        splits: the dataset's name of each split, e.g. {train: train2017, val: val2017, test: val2017}; None
            uses the defaults above (COCO's and VOC 2012's test sets have no public annotations, so test = val).
        ann_file: annotation file of a split relative to root, with `{split}` for the split name (COCO, shapes);
            for VOC the split list (default ImageSets/Main/{split}.txt).
        img_dir: image folder of a split relative to root, with `{split}` (COCO default "{split}").
        voc_classes: VOC class names (category ids 1..K in this order); None: the 20 Pascal VOC classes.
        shapes: "shapes" only: ShapesConfig fields to change (e.g. {num_train: 500}); a non-default set gets its
            own `datasets/shapes-<hash>` folder unless `root` is set. `shapes_config` is its older spelling.
        img_size: side of the square canvas every image is letterboxed to.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        train_transforms: albumentations steps for training, applied to the original image and its boxes
            before the letterbox, e.g. `[{name: HorizontalFlip, p: 0.5}]`; None: flip + random zoom/shift.
        min_visibility: a box cut by augmentation to less than this fraction of its area is dropped.
        mean, std: per-channel normalisation (pixel values scaled to 0..1).
        predict_dir: folder of images to predict on; None predicts on the test split.
    """

    def __init__(
        self,
        dataset: DatasetName = "shapes",
        root: str | None = None,
        splits: dict[str, str] | None = None,
        ann_file: str | None = None,
        img_dir: str | None = None,
        voc_classes: list[str] | None = None,
        shapes: dict[str, int] | None = None,
        shapes_config: dict[str, int] | None = None,
        img_size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        train_transforms: list[dict] | None = None,
        min_visibility: float = 0.3,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset not in _DEFAULTS:
            raise ConfigError(f"data.dataset: found {dataset!r}; expected one of {', '.join(_DEFAULTS)}")
        require(img_size >= 1, "data.img_size", img_size, "a positive number of pixels")
        require(batch_size >= 1, "data.batch_size", batch_size, "a positive integer")
        require(0.0 <= min_visibility <= 1.0, "data.min_visibility", min_visibility, "a fraction in [0, 1]")
        default_root, default_splits, default_ann, default_img = _DEFAULTS[dataset]
        require(dataset == "shapes" or not (shapes or shapes_config), "data.shapes", shapes or shapes_config,
                "null unless data.dataset is shapes")
        self.shapes_cfg = (ShapesConfig.parse(shapes, legacy="shapes_config", legacy_value=shapes_config)
                           if dataset == "shapes" else None)
        self.root = root or (self.shapes_cfg.folder(_DEFAULTS["shapes"][0]) if dataset == "shapes" else default_root)
        self.splits = {**default_splits, **(splits or {})}
        self.ann_pattern, self.img_pattern = ann_file or default_ann, img_dir or default_img
        self.train_transform = build_box_transforms(train_transforms, min_visibility)
        self._json: dict[str, Any] = {}
        self._categories = self._read_categories(voc_classes)
        self.box_fixes = BoxFixes()

    # -- what the model needs to know --
    @property
    def num_classes(self) -> int:
        return len(self._categories)

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in self._categories]

    @property
    def category_ids(self) -> list[int]:
        """The dataset's category id of each contiguous label (what results files must use)."""
        return [cid for cid, _ in self._categories]

    @property
    def img_size(self) -> int:
        return self.hparams.img_size

    def annotation_file(self, split: str) -> str:
        """The COCO-format ground-truth file of a split (shapes, coco), e.g. to re-evaluate a results file."""
        return self._path(self.ann_pattern, self.splits[split])

    # -- Lightning hooks --
    def prepare_data(self) -> None:
        if self.hparams.dataset == "shapes":
            generate_shapes(self.root, self.shapes_cfg)

    def check(self, splits: Sequence[str], limit: int | None = None, workers: int | None = None):
        """`vitkit check-data` of these splits: every file read as training reads it (see `vitkit.checkdata`)."""
        from ..checkdata import check_detection

        return check_detection(self, splits, limit, workers)

    def drop_last(self, split: str, dataset: DetectionDataset) -> bool:
        return split == "train" and len(dataset) > self.hparams.batch_size

    def collate_fn(self, split: str):
        return collate_detection

    # -- reading --
    def _path(self, pattern: str, split_name: str) -> str:
        return os.path.join(self.root, pattern.format(split=split_name))

    _stage_fixes: BoxFixes | None = None  # during setup(): the fixes of all its splits, reported once

    def setup(self, stage: str | None = None) -> None:
        self._stage_fixes = BoxFixes()
        try:
            super().setup(stage)
        finally:
            fixes, self._stage_fixes = self._stage_fixes, None
            if fixes:
                _report_fixes(fixes)

    def build_dataset(self, split: str) -> DetectionDataset:
        records, fixes = self._read(split)
        if fixes:
            self.box_fixes.merge(fixes)
            if self._stage_fixes is not None:
                self._stage_fixes.merge(fixes)
            else:
                _report_fixes(fixes)
        h = self.hparams
        return DetectionDataset(records, h.img_size, h.mean, h.std, self.train_transform if split == "train" else None)

    def _read(self, split: str) -> tuple[list[DetectionRecord], BoxFixes]:
        if split == "predict":
            if self.hparams.predict_dir is None:
                return self._read("test")
            return [_unlabelled(i, p) for i, p in enumerate(list_images(self.hparams.predict_dir))], BoxFixes()
        name = self.splits[split]
        if self.hparams.dataset == "voc":
            return read_voc(self.root, self._path(self.ann_pattern, name), self.class_names)
        if self.hparams.dataset == "shapes":
            generate_shapes(self.root, self.shapes_cfg)  # no-op when present: first use without prepare_data
        path = self._path(self.ann_pattern, name)
        return read_coco(path, self._path(self.img_pattern, name), self.category_ids, self._json.pop(path, None))

    def _read_categories(self, voc_classes: list[str] | None) -> list[tuple[int, str]]:
        """(category id, name) by label: VOC's class list, shapes' fixed classes, or the categories of the
        first COCO annotation file found among val, train and test (kept parsed for setup)."""
        dataset = self.hparams.dataset
        if dataset == "voc":
            return list(enumerate(voc_classes or VOC_CLASSES, start=1))
        if dataset == "shapes":
            return list(enumerate(SHAPES, start=1))  # what generate_shapes writes: ids 1..4
        paths = [self._path(self.ann_pattern, self.splits[s]) for s in ("val", "train", "test")]
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path is None:
            raise DatasetNotFoundError(
                f"COCO-format annotations not found under '{self.root}' (data.root); "
                f"expected {' or '.join(dict.fromkeys(paths))} "
                f"(see datasets/README.md; data.ann_file and data.splits set other names)"
            )
        self._json[path] = load_json(path)
        return coco_categories(self._json[path], path)


def _report_fixes(fixes: BoxFixes) -> None:
    """One warning for all degenerate boxes met while reading (the counts accumulate in `box_fixes`)."""
    message = (f"degenerate boxes: {fixes.dropped} dropped (no area, or outside the image), {fixes.clamped} clamped "
               f"to the image border; e.g. {'; '.join(fixes.examples)}")
    log.warning(message)
    rank_zero_warn(message)
