"""The embedded shapes generator: files in the standard layouts, and annotations that agree with the pixels."""
import json

import numpy as np
from PIL import Image

from vitkit.data.shapes import CLASSES, NUMBERS, ShapesConfig, generate_shapes, render_scene

SMALL = ShapesConfig(num_train=12, num_val=4, num_test=4, seed=3)


def test_files_masks_and_coco_boxes_agree(tmp_path):
    root = generate_shapes(tmp_path / "shapes", SMALL)
    assert (root / "classes.txt").read_text().split() == list(CLASSES)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert len(coco["images"]) == 12 and {c["id"] for c in coco["categories"]} == {1, 2, 3, 4}
    for image in coco["images"]:
        rgb = np.asarray(Image.open(root / "train" / "images" / image["file_name"]))
        mask = np.asarray(Image.open(root / "train" / "masks" / image["file_name"]))
        assert rgb.shape == (64, 64, 3) and mask.shape == (64, 64)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        # every foreground pixel lies in a box of its own class, and the areas add up to the mask
        covered = np.zeros_like(mask, dtype=bool)
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            inside = mask[y:y + h, x:x + w] == a["category_id"]
            covered[y:y + h, x:x + w] |= inside
        assert covered.sum() == (mask > 0).sum() == sum(a["area"] for a in anns)


def test_captions_and_answers_describe_the_scene(tmp_path):
    root = generate_shapes(tmp_path / "shapes", SMALL)
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    caps = json.loads((root / "annotations" / "captions_val.json").read_text())["annotations"]
    vqa = json.loads((root / "annotations" / "vqa_val.json").read_text())
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        texts = [c["caption"] for c in caps if c["image_id"] == image["id"]]
        assert len(texts) >= 2
        for a in anns:
            assert f"{a['color']} {CLASSES[a['category_id']]}" in texts[0]
        for row in (r for r in vqa if r["image_id"] == image["id"]):
            if row["question"] == "how many shapes are there?":
                assert row["answer"] == NUMBERS[len(anns)]


def test_generation_is_reused_or_rebuilt_by_its_parameters(tmp_path):
    root = generate_shapes(tmp_path / "shapes", SMALL)
    first = (root / "train" / "images" / "00000.png").read_bytes()
    stamp = (root / "meta.json").stat().st_mtime_ns
    generate_shapes(root, SMALL)
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # same parameters: not regenerated
    generate_shapes(root, ShapesConfig(num_train=12, num_val=4, num_test=4, seed=4))
    assert (root / "train" / "images" / "00000.png").read_bytes() != first


def test_render_scene_single_object_in_memory():
    scene = render_scene(np.random.default_rng(0), num_shapes=1)
    (obj,) = scene.objects
    x0, y0, x1, y1 = (int(v) for v in obj.box)
    assert (scene.mask > 0).sum() == (scene.mask[y0:y1, x0:x1] > 0).sum() == obj.area
