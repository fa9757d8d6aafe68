"""Detection annotation readers: COCO-format instances JSON (with its categories) and Pascal VOC XML into
`DetectionRecord`s, degenerate boxes clamped to the image or dropped (counted in `BoxFixes`). No transforms and
no data module: those are in `vitkit.data.detection`, which re-exports every name here."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError, DatasetNotFoundError
from .files import read_json, read_text


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


def _unlabelled(index: int, path: str) -> DetectionRecord:
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    return DetectionRecord(index, path, width, height)
