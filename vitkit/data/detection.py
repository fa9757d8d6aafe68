"""Object detection data: COCO-format JSON + image folders (COCO 2017 or any dataset in that format), Pascal
VOC XML, and the embedded shapes scenes (written as a COCO-format dataset); albumentations with boxes.

Every image ends up letterboxed to `img_size` x `img_size` (longest side resized, padded bottom/right), so a
box maps back to the original image by one scale per axis. Batches are `(images, targets)`: float32
(B, 3, img_size, img_size) and one dict per image (see `DetectionDataset.__getitem__`).
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, DatasetNotFoundError, require
from .base import VitkitDataModule
from .files import read_json, read_text
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


@dataclass
class DetectionRecord:
    """One image and its objects: boxes (n, 4) xyxy in the image's pixels, contiguous labels, COCO `iscrowd`
    (crowd regions, VOC "difficult" objects: ignored by the metric, not trained on) and `area` (the
    annotation's, which COCO uses for its small/medium/large split)."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    area: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class BoxFixes:
    """Degenerate boxes met while reading: clamped to the image, or dropped (zero/negative size, outside)."""

    clamped: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, what: str, where: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {what}")

    def merge(self, other: BoxFixes) -> None:
        self.clamped, self.dropped = self.clamped + other.clamped, self.dropped + other.dropped
        self.examples += other.examples[: 5 - len(self.examples)]

    def __bool__(self) -> bool:
        return bool(self.clamped or self.dropped)


def fix_box(box: Sequence[float], width: int, height: int, fixes: BoxFixes, where: str) -> list[float] | None:
    """COCO xywh -> xyxy clamped to the image; None (dropped) when nothing of positive size is left."""
    x, y, w, h = (float(v) for v in box)
    x0, y0, x1, y1 = x, y, x + w, y + h
    if not all(np.isfinite([x0, y0, x1, y1])) or w <= 0 or h <= 0:
        fixes.dropped += 1
        fixes.note(f"bbox {list(box)} has no area (dropped)", where)
        return None
    c = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        fixes.dropped += 1
        fixes.note(f"bbox {list(box)} lies outside the {width}x{height} image (dropped)", where)
        return None
    if c != [x0, y0, x1, y1]:
        fixes.clamped += 1
        fixes.note(f"bbox {list(box)} crosses the {width}x{height} image border (clamped)", where)
    return c


# ---------------------------------------------------------------------------------------------- COCO
def load_json(path: str) -> Any:
    """The parsed annotation file; an error naming the file (and line and column) when it is missing, not
    UTF-8 or not valid JSON."""
    return read_json(path, "a COCO-format instances JSON with 'images', 'annotations' and 'categories'")


def coco_categories(data: Any, path: str) -> list[tuple[int, str]]:
    """(id, name) of a COCO file's categories, sorted by id."""
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        found = f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: no 'categories' list (found {found}); expected a COCO instances file")
    cats = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DataError(f"{path}: categories[{i}] = {c!r}; expected {{'id': int, 'name': str}}")
        cats.append((c["id"], str(c["name"])))
    ids = [c[0] for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: category ids {sorted(ids)} repeat; expected each id once")
    return sorted(cats)


def read_coco(
    path: str, image_dir: str, category_ids: Sequence[int], data: Any = None
) -> tuple[list[DetectionRecord], BoxFixes]:
    """Records of a COCO instances file, every image kept (those without annotations are negatives).

    Raises DataError naming the file and record for malformed JSON, a record missing a field, an annotation
    whose image_id is not among the images or whose category_id is not among `category_ids`; and
    DatasetNotFoundError for an image file that is not in `image_dir`.
    """
    data = load_json(path) if data is None else data
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(
                f"{path}: no '{key}' list; expected a COCO instances file with 'images', 'annotations', 'categories'"
            )
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    records: dict[int, DetectionRecord] = {}
    for i, im in enumerate(data["images"]):
        rec = _image_record(im, i, path, image_dir)
        if rec.image_id in records:
            raise DataError(f"{path}: images[{i}] repeats image id {rec.image_id}; expected unique ids")
        records[rec.image_id] = rec
    fixes = BoxFixes()
    objects: dict[int, list[tuple]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path} annotation id {ann.get('id', '?') if isinstance(ann, dict) else '?'} (annotations[{i}])"
        img_id, cat, bbox = _annotation_fields(ann, where)
        if img_id not in records:
            raise DataError(f"{where}: image_id {img_id} is not among the file's {len(records)} images; "
                            f"expected the id of an entry of 'images'")
        if cat not in label_of:
            raise DataError(f"{where}: unknown category_id {cat}; expected one of {sorted(label_of)}")
        rec = records[img_id]
        box = fix_box(bbox, rec.width, rec.height, fixes, f"{where}, image {rec.path}")
        if box is not None:
            area = float(ann.get("area", (box[2] - box[0]) * (box[3] - box[1])))
            objects.setdefault(img_id, []).append((box, label_of[cat], int(bool(ann.get("iscrowd", 0))), area))
    for img_id, objs in objects.items():
        _set_objects(records[img_id], objs)
    _check_files(records.values(), path)
    return list(records.values()), fixes


def _image_record(im: Any, i: int, path: str, image_dir: str) -> DetectionRecord:
    need = {"id": int, "file_name": str, "width": int, "height": int}
    if not isinstance(im, dict) or any(not isinstance(im.get(k), t) for k, t in need.items()):
        raise DataError(
            f"{path}: images[{i}] = {_short(im)}; expected id (int), file_name (str), width and height (int)"
        )
    return DetectionRecord(im["id"], os.path.join(image_dir, im["file_name"]), im["width"], im["height"])


def _annotation_fields(ann: Any, where: str) -> tuple[int, int, list]:
    if not isinstance(ann, dict):
        raise DataError(f"{where}: {_short(ann)}; expected a dict with image_id, category_id and bbox")
    img_id, cat, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
    if not isinstance(img_id, int) or not isinstance(cat, int):
        raise DataError(f"{where}: image_id={img_id!r}, category_id={cat!r}; expected integers")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise DataError(f"{where}: bbox={bbox!r}; expected [x, y, width, height] (4 numbers, pixels)")
    return img_id, cat, bbox


def _short(obj: Any, n: int = 120) -> str:
    text = repr(obj)
    return text if len(text) <= n else text[:n] + "..."


def _set_objects(rec: DetectionRecord, objs: list[tuple]) -> None:
    boxes, labels, crowd, area = zip(*objs)
    rec.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    rec.labels, rec.iscrowd = np.asarray(labels, np.int64), np.asarray(crowd, np.int64)
    rec.area = np.asarray(area, np.float32)


def _check_files(records, source: str) -> None:
    missing = [r for r in records if not os.path.isfile(r.path)]
    if missing:
        first = missing[0]
        raise DatasetNotFoundError(
            f"{source}: image id {first.image_id} points at {first.path}, which does not exist "
            f"({len(missing)} of {len(list(records))} image files missing); expected the images under the image folder "
            f"(data.img_dir)"
        )


# ---------------------------------------------------------------------------------------------- VOC
def read_voc(root: str, split_file: str, class_names: Sequence[str]) -> tuple[list[DetectionRecord], BoxFixes]:
    """Pascal VOC: the image ids listed in `split_file`, their `Annotations/<id>.xml` and `JPEGImages/<id>.jpg`.
    Image ids are positions in the list; "difficult" objects are kept as ignored (iscrowd=1)."""
    if not os.path.isfile(split_file):
        raise DatasetNotFoundError(f"{split_file}: split list not found; expected a VOC ImageSets/Main/<split>.txt "
                                   f"under {root} (data.root)")
    lines = read_text(split_file, "a VOC split list with one image id per line").splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    if not names:
        raise DataError(f"{split_file}: no image ids; expected a VOC split list with one image id per line")
    label_of = {n: i for i, n in enumerate(class_names)}
    fixes, records = BoxFixes(), []
    for index, name in enumerate(names):
        records.append(_voc_record(root, name, index, label_of, fixes, split_file))
    _check_files(records, split_file)
    return records, fixes


def _voc_record(root: str, name: str, index: int, label_of: dict[str, int], fixes: BoxFixes,
                split_file: str) -> DetectionRecord:
    xml = os.path.join(root, "Annotations", f"{name}.xml")
    if not os.path.isfile(xml):
        raise DatasetNotFoundError(f"{xml}: annotation of image '{name}' (listed in {split_file}) not found; "
                                   f"expected Annotations/<id>.xml")
    try:
        tree = ET.parse(xml).getroot()
        width, height = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
    except (ET.ParseError, TypeError, ValueError) as err:
        raise DataError(
            f"{xml}: malformed VOC annotation ({err}); expected <annotation> with <size><width>/<height>"
        ) from err
    rec = DetectionRecord(index, os.path.join(root, "JPEGImages", tree.findtext("filename") or f"{name}.jpg"),
                          width, height)
    objs = []
    for k, obj in enumerate(tree.findall("object")):
        where = f"{xml} object {k}"
        cls = (obj.findtext("name") or "").strip()
        if cls not in label_of:
            raise DataError(f"{where}: unknown class '{cls}'; expected one of {', '.join(label_of)} (data.voc_classes)")
        try:
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: bndbox needs numeric xmin, ymin, xmax, ymax ({err})") from err
        box = fix_box([x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], width, height, fixes, where)  # 1-based, inclusive
        if box is not None:
            difficult = int((obj.findtext("difficult") or "0").strip() == "1")
            objs.append((box, label_of[cls], difficult, (box[2] - box[0]) * (box[3] - box[1])))
    if objs:
        _set_objects(rec, objs)
    return rec


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


def _unlabelled(index: int, path: str) -> DetectionRecord:
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    return DetectionRecord(index, path, width, height)


def _report_fixes(fixes: BoxFixes) -> None:
    """One warning for all degenerate boxes met while reading (the counts accumulate in `box_fixes`)."""
    message = (f"degenerate boxes: {fixes.dropped} dropped (no area, or outside the image), {fixes.clamped} clamped "
               f"to the image border; e.g. {'; '.join(fixes.examples)}")
    log.warning(message)
    rank_zero_warn(message)
