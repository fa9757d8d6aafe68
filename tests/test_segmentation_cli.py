"""Segmentation from the command line: a short shapes training whose loss falls, `test --ckpt_path` giving the
same numbers as the test after fit, predict writing masks and overlays, the ADE20K config on a stand-in
folder, and bad data ending in one clear message."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / "configs/segmentation/shapes_segmenter.yaml")
TINY_MODEL = ('{"head": "conv", "encoder_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}, '
              '"head_kwargs": {"channels": 16}}')
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def shapes_args(tmp: Path, *extra: str) -> list[str]:
    return ["--config", SHAPES, "--trainer.default_root_dir", str(tmp / "runs"),
            "--data.init_args.root", str(tmp / "data"),
            "--data.init_args.shapes", '{"num_train": 48, "num_val": 8, "num_test": 8}',
            "--data.init_args.batch_size", "8",
            "--model.init_args.model_kwargs", TINY_MODEL, "--model.init_args.num_visualize", "3", *QUIET, *extra]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """36 steps of the shapes config on a small generated set, then the test of the best checkpoint."""
    tmp = tmp_path_factory.mktemp("seg")
    main(["fit", *shapes_args(tmp, "--trainer.max_steps", "36", "--trainer.log_every_n_steps", "1",
                              "--model.init_args.lr", "4e-3", "--test_after_fit", "true")])
    return tmp / "runs" / "shapes_segmenter" / "version_0"


def test_short_shapes_training_loss_falls_and_logs_miou(fitted):
    logged = rows(fitted)
    losses = [float(r["train/loss"]) for r in logged if r.get("train/loss")]
    assert len(losses) == 36
    # the class-weighted loss of the README config, on a 1-block model: about 2.0 -> 1.4 in 36 steps
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), f"loss did not fall: {losses[:6]} ... {losses[-6:]}"
    miou = [float(r["val/mIoU"]) for r in logged if r.get("val/mIoU")]
    assert len(miou) == 6 and all(0 <= v <= 1 for v in miou)
    test = next(r for r in logged if r.get("test/mIoU"))
    assert 0 < float(test["test/mIoU"]) <= float(test["test/pixel_acc"]) <= 1
    table = list(csv.DictReader(open(fitted / "per_class_iou.csv")))
    assert [r["class"] for r in table][:5] == ["background", "circle", "square", "triangle", "star"]
    assert (float(next(r for r in table if r["class"] == "mean")["iou"])
            == pytest.approx(float(test["test/mIoU"]), abs=1e-6))
    pictures = sorted(p.name for p in (fitted / "test_samples").iterdir())
    assert len(pictures) == 6 and pictures[0] == "000_00000_mask.png" and pictures[1] == "000_00000_overlay.png"
    assert Image.open(fitted / "test_samples" / pictures[1]).size == (64 * 3 + 8, 64), "image | truth | prediction"


def test_test_subcommand_reproduces_the_numbers(fitted):
    tmp = fitted.parents[2]
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    main(["test", *shapes_args(tmp, "--ckpt_path", str(best), "--run_name", "retest")])
    after_fit = next(r for r in rows(fitted) if r.get("test/mIoU"))
    again = next(r for r in rows(tmp / "runs" / "retest" / "version_0") if r.get("test/mIoU"))
    for key in ("test/mIoU", "test/pixel_acc", "test/mAcc"):
        assert float(again[key]) == pytest.approx(float(after_fit[key]), abs=1e-7), key


def test_predict_writes_index_masks_and_overlays(fitted):
    tmp = fitted.parents[2]
    images = tmp / "to_predict"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a", (64, 64)), ("b", (80, 100)), ("c", (40, 50))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / f"{name}.png")
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    main(["predict", *shapes_args(tmp, "--ckpt_path", str(best), "--run_name", "pred",
                                  "--data.init_args.predict_dir", str(images))])
    out = tmp / "runs" / "pred" / "version_0"
    for name, (h, w) in (("a", (64, 64)), ("b", (80, 100)), ("c", (40, 50))):
        mask = Image.open(out / "predictions" / f"{name}.png")
        assert mask.mode == "P" and mask.size == (w, h) and np.asarray(mask).max() < 5
    assert len(list((out / "predictions" / "overlays").glob("*_overlay.png"))) == 3
    listed = json.loads((out / "predictions.json").read_text())
    assert [Path(r["path"]).name for r in listed] == ["a.png", "b.png", "c.png"]
    assert all(abs(sum(r["fractions"].values()) - 1) < 1e-4 for r in listed)


def test_ade20k_config_runs_on_a_stand_in_folder(tmp_path):
    """The ADE20K recipe end to end with a tiny model: reduce_zero_label, SGD + poly, eval resize and windows."""
    ade = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for part, n in (("training", 4), ("validation", 2)):
        (ade / "images" / part).mkdir(parents=True)
        (ade / "annotations" / part).mkdir(parents=True)
        for i in range(n):
            h, w = (40, 56) if i % 2 else (48, 40)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                ade / "images" / part / f"ADE_{i}.jpg")
            Image.fromarray(rng.integers(0, 151, (h, w)).astype(np.uint8)).save(
                ade / "annotations" / part / f"ADE_{i}.png")
    main(["fit", "--config", str(ROOT / "configs/segmentation/ade20k_segmenter_vit_s16.yaml"),
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.init_args.root", str(tmp_path),
          "--data.init_args.img_size", "32", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
          "--model.init_args.pretrained", "null", "--model.init_args.slide_stride", "16",
          "--model.init_args.model_kwargs", '{"encoder_kwargs": {"depth": 1}, "head_kwargs": {"depth": 1}}',
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", *QUIET])
    run = tmp_path / "runs" / "ade20k_segmenter_vit_s16" / "version_0"
    test = next(r for r in rows(run) if r.get("test/mIoU"))
    assert 0 <= float(test["test/mIoU"]) <= 1
    table = list(csv.DictReader(open(run / "per_class_iou.csv")))
    assert len([r for r in table if r["index"]]) == 150 and table[0]["class"] == "wall"


def test_voc_config_parses(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/segmentation/voc_segmenter_vit_s16.yaml"), "--print_config"])
    out = capsys.readouterr().out
    assert "dataset: voc" in out and "schedule: poly" in out and "img_size: 512" in out


def test_a_mask_of_the_wrong_size_stops_fit_with_one_message(tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / split / "images" / f"{i}.png")
            Image.fromarray(np.zeros((64 if i else 60, 64), np.uint8)).save(tmp_path / split / "masks" / f"{i}.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SHAPES, "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--data.init_args.dataset", "folder", "--data.init_args.root", str(tmp_path),
              "--data.init_args.batch_size", "2",
              "--model.init_args.model_kwargs", TINY_MODEL, "--model.init_args.class_weights", "null",
              "--trainer.max_steps", "1", *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "0.png: mask is 64x60 (width x height) but its image" in err and "Traceback" not in err
