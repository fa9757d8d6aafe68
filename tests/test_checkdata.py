"""`vitkit check-data`: a clean dataset passes; broken files, wrong modes, bad masks, degenerate boxes and
duplicate ids are each reported at the right file with a non-zero exit status; other data modules are checked
through their own `check()` or by loading every item."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import yaml
from PIL import Image
from torch.utils.data import Dataset

from vitkit.checkdata import Finding, check_datamodule
from vitkit.cli import main
from vitkit.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def check(capsys, *args: str) -> tuple[int, str]:
    """Run `vitkit check-data`; (exit status, printed report)."""
    try:
        main(["check-data", *args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def config(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return str(path)


def lines_about(report: str, name: str) -> list[str]:
    return [line for line in report.splitlines() if name in line]


def test_the_digits_config_is_clean(capsys):
    code, report = check(capsys, "--config", str(ROOT / "configs/classification/vit_tiny_digits.yaml"))
    assert code == 0 and "check-data OK: 0 error(s), 0 warning(s)" in report
    assert "1258" in report and "180" in report and "359" in report  # train / val / test sizes


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                tmp_path / "train" / cls / f"{i}.jpg")
    good = (tmp_path / "train/cats/0.jpg").read_bytes()
    (tmp_path / "train/cats/truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "train/cats/noise.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (tmp_path / "train/dogs/empty.jpg").write_bytes(b"")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), mode="RGBA").convert("CMYK").save(
        tmp_path / "train/dogs/cmyk.jpg")
    return tmp_path


def test_broken_image_files_fail_the_check_each_named(messy_folder, capsys):
    cfg = config(messy_folder, {"class_path": "vitkit.data.ClassificationDataModule",
                                "init_args": {"dataset": "imagefolder", "root": str(messy_folder),
                                              "val_fraction": 0.3}})
    code, report = check(capsys, "--config", cfg, "--show", "50")
    assert code == 1 and "check-data FAILED: 3 error(s), 1 warning(s)" in report
    assert any("truncated" in line and "ERROR" in line for line in lines_about(report, "truncated.jpg"))
    assert any("unreadable" in line for line in lines_about(report, "noise.png"))
    assert any("empty" in line and "0 bytes" in line for line in lines_about(report, "empty.jpg"))
    assert any("WARNING" in line and "mode CMYK" in line for line in lines_about(report, "cmyk.jpg"))
    # the same folder with the broken files removed passes, the CMYK one only warns (and fails under --strict)
    for name in ("cats/truncated.jpg", "cats/noise.png", "dogs/empty.jpg"):
        (messy_folder / "train" / name).unlink()
    assert check(capsys, "--config", cfg)[0] == 0
    assert check(capsys, "--config", cfg, "--strict")[0] == 1


def test_masks_of_wrong_size_mode_or_labels_and_missing_data(tmp_path, capsys):
    root = tmp_path / "seg"
    (root / "train/images").mkdir(parents=True)
    (root / "train/masks").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    rng = np.random.default_rng(0)
    for name in ("ok", "small", "label7", "rgb", "ok2"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / f"train/images/{name}.png")
    mask = np.zeros((24, 32), np.uint8)
    mask[4:10, 4:10] = 2
    Image.fromarray(mask).save(root / "train/masks/ok.png")
    Image.fromarray(mask).save(root / "train/masks/ok2.png")
    Image.fromarray(mask[:20]).save(root / "train/masks/small.png")
    bad = mask.copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(root / "train/masks/label7.png")
    Image.fromarray(np.stack([mask] * 3, -1)).save(root / "train/masks/rgb.png")
    cfg = config(tmp_path, {"class_path": "vitkit.data.SegmentationDataModule",
                            "init_args": {"dataset": "folder", "root": str(root), "val_fraction": 0.2}})
    code, report = check(capsys, "--config", cfg, "--show", "50")
    assert code == 1
    assert any("mask-size" in line and "mask is 32x20" in line for line in lines_about(report, "small.png"))
    assert any("mask-label" in line and "label value(s) 7" in line for line in lines_about(report, "label7.png"))
    assert any("mask-mode" in line and "mode RGB" in line for line in lines_about(report, "rgb.png"))
    assert not any("ERROR" in line for line in lines_about(report, "ok.png") + lines_about(report, "ok2.png"))


def coco(tmp_path: Path) -> Path:
    """A COCO-format set: train with a zero-width box, a box outside its image, one crossing the border and an
    image whose annotated size is wrong; val repeating an image id."""
    root = tmp_path / "coco"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / split / f"{i}.png")
    (root / "annotations").mkdir()
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in range(3)]
    images[2]["width"] = 40
    anns = [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [4, 4, 0, 10]},      # no width: dropped
            {"id": 2, "image_id": 0, "category_id": 1, "bbox": [50, 50, 5, 5]},     # outside: dropped
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [28, 4, 10, 10]},    # crosses the border: clamped
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10]}]
    cats = [{"id": 1, "name": "thing"}]
    (root / "annotations/train.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    val_images = [{"id": 0, "file_name": "0.png", "width": 32, "height": 32},
                  {"id": 0, "file_name": "1.png", "width": 32, "height": 32}]
    (root / "annotations/val.json").write_text(
        json.dumps({"images": val_images, "annotations": [], "categories": cats}))
    return root


def test_degenerate_boxes_size_mismatch_and_duplicate_ids(tmp_path, capsys):
    root = coco(tmp_path)
    cfg = config(tmp_path, {"class_path": "vitkit.data.DetectionDataModule",
                            "init_args": {"dataset": "coco", "root": str(root),
                                          "splits": {"train": "train", "val": "val", "test": "val"},
                                          "ann_file": "annotations/{split}.json", "img_dir": "{split}"}})
    code, report = check(capsys, "--config", cfg, "--splits", "train", "val", "--show", "50")
    assert code == 1
    assert any("box-dropped" in line and "2 degenerate or out-of-image box(es)" in line for line in report.splitlines())
    assert any("box-clamped" in line and "1 box(es) crossing the image border" in line for line in report.splitlines())
    assert any("size-mismatch" in line and "image is 32x32, its annotation says 40x32" in line
               for line in lines_about(report, "2.png"))
    assert any("duplicate" in line and "repeats image id 0" in line for line in report.splitlines())


class ItemsDataModule(pl.LightningDataModule):
    """A data module vitkit has no checker for: item 2 of every split raises a DataError when loaded."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.n = n

    def get_dataset(self, split: str) -> Dataset:
        n = self.n

        class Items(Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                if i == 2:
                    raise DataError(f"{split}.tsv line {i + 1}: empty target; expected text on both sides")
                return i

        return Items()


class SelfCheckingDataModule(pl.LightningDataModule):
    """A data module with its own `check()`, which check-data asks directly."""

    def check(self, splits):
        return [("train", "error", "duplicate", "id 7", "listed twice"),
                Finding("val", "warning", "mode", "a.png", "mode LA")]


def test_other_data_modules_by_loading_items_or_their_own_check(tmp_path, capsys):
    code, report = check(capsys, "--config", config(tmp_path, {"class_path": "test_checkdata.ItemsDataModule"}),
                         "--show", "50")
    assert code == 1 and "check-data FAILED: 3 error(s), 0 warning(s)" in report
    assert all(any("empty target" in line for line in lines_about(report, f"{s}[2]")) for s in ("train", "val", "test"))
    result = check_datamodule(SelfCheckingDataModule(), ["train", "val"])
    assert (result.errors, result.warnings) == (1, 1) and result.findings[0].where == "id 7"


def test_config_errors_are_one_clear_message(tmp_path, capsys):
    code, report = check(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: file not found" in report
    cfg = config(tmp_path, {"class_path": "vitkit.data.ClassificationDataModule",
                            "init_args": {"dataset": "imagefolder", "root": str(tmp_path / "missing")}})
    code, report = check(capsys, "--config", cfg)
    assert code == 2 and "missing/train: folder not found" in report and "Traceback" not in report
