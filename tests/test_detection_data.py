"""DetectionDataModule: COCO/VOC readers, category-id mapping, negatives, letterbox, augmentation keeping boxes
on their objects, degenerate boxes in one warning, and errors that name the file and the record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import DetectionDataModule
from vitkit.data.detection import letterbox
from vitkit.errors import ConfigError, DataError, DatasetNotFoundError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_coco(root: Path, split: str, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """A COCO-format split: solid grey images with a red rectangle per annotation."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for im in images:
        pixels = np.full((im["height"], im["width"], 3), 90, np.uint8)
        for a in annotations:
            if a["image_id"] == im["id"] and len(a["bbox"]) == 4:
                x, y, w, h = (int(round(v)) for v in a["bbox"])
                pixels[max(y, 0) : y + h, max(x, 0) : x + w] = (230, 20, 20)
        Image.fromarray(pixels).save(root / split / im["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


CATS = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 90, "name": "toothbrush"}]


def ann(i: int, image_id: int, cat: int, bbox: list[float], **kw) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
            **kw}


@pytest.fixture
def coco(tmp_path) -> Path:
    images = [{"id": 11, "file_name": "a.png", "width": 48, "height": 32},
              {"id": 12, "file_name": "b.png", "width": 32, "height": 32},
              {"id": 13, "file_name": "empty.png", "width": 40, "height": 24}]  # a negative
    anns = [ann(1, 11, 17, [4, 6, 10, 8]), ann(2, 11, 90, [30, 10, 12, 16]), ann(3, 12, 3, [8, 8, 16, 16]),
            ann(4, 12, 17, [0, 0, 6, 6], iscrowd=1)]
    for split in ("train", "val"):
        write_coco(tmp_path, split, images, anns, CATS)
    return tmp_path


def coco_module(root: Path, **kw) -> DetectionDataModule:
    return DetectionDataModule("coco", root=str(root), splits={"train": "train", "val": "val", "test": "val"},
                               img_size=32, batch_size=2, **kw)


def test_coco_categories_are_mapped_to_contiguous_labels_and_back(coco):
    dm = coco_module(coco)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "toothbrush"]
    assert dm.category_ids == [3, 17, 90]
    records = {r.image_id: r for r in dm.get_dataset("val").records}
    assert records[11].labels.tolist() == [1, 2]  # dog, toothbrush
    assert [dm.category_ids[label] for label in records[11].labels] == [17, 90]


def test_negatives_are_kept_and_crowd_is_evaluated_but_not_trained(coco):
    dm = coco_module(coco)
    ds = dm.get_dataset("val")
    assert sorted(r.image_id for r in ds.records) == [11, 12, 13]
    by_id = {ds[i][1]["image_id"]: ds[i][1] for i in range(len(ds))}
    assert by_id[13]["boxes"].shape == (0, 4) and by_id[13]["eval_boxes"].shape == (0, 4)
    assert by_id[12]["labels"].tolist() == [0]  # the crowd box is not a training target ...
    assert by_id[12]["iscrowd"].tolist() == [0, 1] and len(by_id[12]["eval_boxes"]) == 2  # ... but is evaluated


def test_letterbox_maps_boxes_exactly_and_back(coco):
    """A 48x32 image becomes a 32x32 canvas (scale 2/3, padded at the bottom); targets carry what undoes it."""
    ds = coco_module(coco).get_dataset("val")
    x, t = next(ds[i] for i in range(len(ds)) if ds[i][1]["image_id"] == 11)
    assert x.shape == (3, 32, 32) and t["orig_size"] == (32, 48)
    sx, sy = t["scale"]
    assert sx == pytest.approx(32 / 48) and sy == pytest.approx(round(32 * 32 / 48) / 32)
    cxcywh = t["boxes"] * 32
    xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    back = xyxy / torch.tensor([sx, sy, sx, sy])
    torch.testing.assert_close(back, t["eval_boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(t["eval_boxes"], torch.tensor([[4.0, 6, 14, 14], [30, 10, 42, 26]]))
    padding = x[:, 22:, :]  # below the 21-px-high resized image: the mean colour, 0 after normalisation
    assert padding.abs().max() < 0.02


def test_letterbox_of_a_tall_image():
    image = np.zeros((100, 50, 3), np.uint8)
    canvas, boxes, (sx, sy) = letterbox(image, np.array([[10.0, 20, 30, 60]], np.float32), 64, (0, 0, 0))
    assert canvas.shape == (64, 64, 3) and (sx, sy) == (32 / 50, 64 / 100)
    np.testing.assert_allclose(boxes, [[6.4, 12.8, 19.2, 38.4]], rtol=1e-6)


def red_box(x: torch.Tensor) -> list[float]:
    """Bounding box (xyxy, canvas pixels) of the red pixels of a normalised image."""
    pixels = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    ys, xs = torch.nonzero((pixels[0] > 0.7) & (pixels[1] < 0.3), as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_augmented_boxes_stay_on_their_objects(tmp_path):
    """Flip + zoom/shift move the image and the box together: the box still encloses the object's pixels."""
    write_coco(tmp_path, "train", [{"id": 1, "file_name": "one.png", "width": 64, "height": 64}],
               [ann(1, 1, 3, [8, 20, 14, 10])], CATS[:1])
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"train": "train", "val": "train", "test": "train"},
                             img_size=64, min_visibility=0.0, train_transforms=[
                                 {"name": "HorizontalFlip", "p": 1.0},
                                 {"name": "Affine", "scale": [0.7, 1.3], "translate_percent": [-0.1, 0.1], "p": 1.0}])
    ds = dm.get_dataset("train")
    ds.transform.set_random_seed(0)
    for _ in range(8):
        x, t = ds[0]
        assert len(t["boxes"]) == 1
        cx, cy, w, h = (t["boxes"][0] * 64).tolist()
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        assert cx > 32, "flipped to the right half"
        np.testing.assert_allclose(box, red_box(x), atol=1.5)


def test_min_visibility_drops_boxes_cut_by_the_crop(tmp_path):
    write_coco(tmp_path, "train", [{"id": 1, "file_name": "one.png", "width": 64, "height": 64}],
               [ann(1, 1, 3, [0, 0, 20, 20]), ann(2, 1, 3, [40, 40, 16, 16])], CATS[:1])
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"train": "train", "val": "train", "test": "train"},
                             img_size=32, min_visibility=0.5,
                             train_transforms=[{"name": "Crop", "x_min": 10, "y_min": 10, "x_max": 64, "y_max": 64}])
    _, t = dm.get_dataset("train")[0]
    assert len(t["boxes"]) == 1  # the first box keeps 100/400 of its area (< 0.5) and is dropped
    assert dm.get_dataset("val")[0][1]["eval_boxes"].shape == (2, 4)  # evaluation is never augmented


def test_degenerate_boxes_are_clamped_or_dropped_in_one_warning(tmp_path, caplog):
    anns = [ann(1, 1, 3, [4, 4, 8, 8]), ann(2, 1, 3, [5, 5, 0, 6]), ann(3, 1, 3, [5, 5, -3, 6]),
            ann(4, 1, 3, [28, 28, 10, 10]), ann(5, 1, 3, [40, 40, 5, 5]), ann(6, 1, 3, [-4, 2, 8, 8])]
    for split in ("train", "val"):
        write_coco(tmp_path, split, [{"id": 1, "file_name": "one.png", "width": 32, "height": 32}], anns, CATS[:1])
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"train": "train", "val": "val", "test": "val"},
                             img_size=32)
    with pytest.warns(UserWarning) as record:
        dm.setup("fit")
    messages = [str(w.message) for w in record if "degenerate" in str(w.message)]
    assert len(messages) == 1, "one warning for all splits read together"
    assert "6 dropped" in messages[0] and "4 clamped" in messages[0] and "annotation id 2" in messages[0]
    assert dm.box_fixes.dropped == 6 and dm.box_fixes.clamped == 4  # 3 + 2 per split
    boxes = dm.get_dataset("val").records[0].boxes
    np.testing.assert_allclose(boxes, [[4, 4, 12, 12], [28, 28, 32, 32], [0, 2, 4, 10]])


def test_annotation_of_a_missing_image_names_the_file_and_record(tmp_path):
    write_coco(tmp_path, "val", [{"id": 1, "file_name": "one.png", "width": 32, "height": 32}],
               [ann(1, 1, 3, [1, 1, 5, 5]), ann(77, 5, 3, [1, 1, 5, 5])], CATS[:1])
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"val": "val"}, img_size=32)
    with pytest.raises(DataError, match=r"instances_val\.json annotation id 77 .*image_id 5 is not among"):
        dm.get_dataset("val")


def test_image_file_missing_on_disk_names_the_json_and_the_path(tmp_path):
    write_coco(tmp_path, "val", [{"id": 1, "file_name": "one.png", "width": 32, "height": 32}], [], CATS[:1])
    data = json.loads((tmp_path / "annotations/instances_val.json").read_text())
    data["images"].append({"id": 2, "file_name": "gone.jpg", "width": 32, "height": 32})
    (tmp_path / "annotations/instances_val.json").write_text(json.dumps(data))
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"val": "val"}, img_size=32)
    with pytest.raises(DatasetNotFoundError, match=r"instances_val\.json: image id 2 points at .*gone\.jpg"):
        dm.get_dataset("val")


def test_unknown_category_id_names_the_file_and_record(tmp_path):
    write_coco(tmp_path, "val", [{"id": 1, "file_name": "one.png", "width": 32, "height": 32}],
               [ann(5, 1, 4, [1, 1, 5, 5])], CATS)
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"val": "val"}, img_size=32)
    with pytest.raises(DataError, match=r"annotation id 5 .*unknown category_id 4; expected one of \[3, 17, 90\]"):
        dm.get_dataset("val")


def test_malformed_json_names_the_file_line_and_column(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_val.json").write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(DataError, match=r"instances_val\.json: invalid JSON .* line 2, column 18"):
        DetectionDataModule("coco", root=str(tmp_path), splits={"val": "val"})


def test_malformed_record_names_the_field(tmp_path):
    write_coco(tmp_path, "val", [{"id": 1, "file_name": "one.png", "width": 32, "height": 32}],
               [{**ann(9, 1, 3, [1, 1, 5, 5]), "bbox": [1, 1, 5]}], CATS)
    dm = DetectionDataModule("coco", root=str(tmp_path), splits={"val": "val"}, img_size=32)
    with pytest.raises(DataError, match=r"annotation id 9 .*bbox=\[1, 1, 5\]; expected \[x, y, width, height\]"):
        dm.get_dataset("val")


def test_missing_coco_folder_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nowhere.*instances_val2017\.json"):
        DetectionDataModule("coco", root=str(tmp_path / "nowhere"))


def write_voc(root: Path, name: str, objects: list[tuple[str, list[int], int]], size=(40, 30)) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    objs = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for c, b, d in objects)
    (root / "Annotations" / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{objs}</annotation>")


def test_voc_reader_boxes_difficult_and_negatives(tmp_path):
    write_voc(tmp_path, "img1", [("dog", [5, 6, 20, 25], 0), ("person", [1, 1, 10, 10], 1)])
    write_voc(tmp_path, "img2", [])
    (tmp_path / "ImageSets/Main/val.txt").write_text("img1\nimg2\n")
    dm = DetectionDataModule("voc", root=str(tmp_path), img_size=40)
    assert dm.num_classes == 20 and dm.class_names[11] == "dog" and dm.category_ids[11] == 12
    r1, r2 = dm.get_dataset("val").records
    np.testing.assert_allclose(r1.boxes, [[4, 5, 20, 25], [0, 0, 10, 10]])  # 1-based inclusive -> 0-based
    assert r1.labels.tolist() == [11, 14] and r1.iscrowd.tolist() == [0, 1]  # "difficult" is ignored in eval
    assert r2.boxes.shape == (0, 4)


def test_voc_unknown_class_names_the_xml_and_object(tmp_path):
    write_voc(tmp_path, "img1", [("dog", [5, 6, 20, 25], 0), ("unicorn", [1, 1, 4, 4], 0)])
    (tmp_path / "ImageSets/Main/val.txt").write_text("img1\n")
    dm = DetectionDataModule("voc", root=str(tmp_path))
    with pytest.raises(DataError, match=r"img1\.xml object 1: unknown class 'unicorn'"):
        dm.get_dataset("val")


def test_bad_config_values_are_clear():
    with pytest.raises(ConfigError, match="data.min_visibility"):
        DetectionDataModule(min_visibility=1.5)
    with pytest.raises(ConfigError, match="data.shapes_config"):
        DetectionDataModule(shapes_config={"num_trian": 4})
    with pytest.raises(ConfigError, match=r"data.train_transforms\[0\]: unknown transform 'Fliip'"):
        DetectionDataModule(train_transforms=[{"name": "Fliip"}])


def test_shapes_default_is_generated_on_first_use(tmp_path):
    cfg = {"img_size": 32, "min_size": 8, "max_size": 12, "num_train": 4, "num_val": 3, "num_test": 2}
    dm = DetectionDataModule(root=str(tmp_path / "shapes"), shapes_config=cfg, img_size=32, batch_size=3)
    assert dm.class_names == ["circle", "square", "triangle", "star"] and dm.category_ids == [1, 2, 3, 4]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and len(targets) == 3
    gt = json.loads(Path(dm.annotation_file("val")).read_text())
    assert [t["image_id"] for t in targets] == [im["id"] for im in gt["images"]]
    first = [a for a in gt["annotations"] if a["image_id"] == targets[0]["image_id"]]
    x, y, w, h = first[0]["bbox"]
    torch.testing.assert_close(targets[0]["eval_boxes"][0], torch.tensor([x, y, x + w, y + h]))
    assert targets[0]["eval_labels"][0] == first[0]["category_id"] - 1


def test_custom_shapes_config_never_rewrites_the_shared_folder():
    dm = DetectionDataModule(shapes_config={"num_train": 5})
    assert dm.root != "datasets/shapes" and dm.root.startswith("datasets/shapes-")
    assert DetectionDataModule().root == "datasets/shapes"
