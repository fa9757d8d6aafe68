"""A user's own image folder: the default pipeline is chosen from the images, small folders are served from
memory, and the embedded digits written out as files train through the folder path as the embedded set does."""
from __future__ import annotations

import logging
import os

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import ClassificationDataModule, choose_folder_pipeline, image_stats, write_image_folder
from vitkit.errors import ConfigError, CorruptImageError, DataError


def _write_folder(root, size: tuple[int, int], mode: str, per_class: int = 6, classes: int = 2) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(root / "train" / f"c{c}", exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
                root / "train" / f"c{c}" / f"{i}.png")


def _names(compose: A.Compose) -> list[str]:
    return [type(t).__name__ for t in compose.transforms]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_png")
    written = write_image_folder(ClassificationDataModule("digits"), str(root))
    return root, written


def test_small_grayscale_folder_gets_the_small_image_pipeline(tmp_path, caplog):
    _write_folder(tmp_path, (28, 28), "L")
    with caplog.at_level(logging.INFO, logger="vitkit"):
        dm = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=32, val_fraction=0.25)
        train = _names(dm.train_transform)
    assert dm.folder_pipeline.name == "small-gray"
    # resized whole and jittered lightly: no crop that drops strokes, no flip that mirrors a digit
    assert train[:2] == ["Resize", "Affine"] and "HorizontalFlip" not in train and "RandomResizedCrop" not in train
    assert "ColorJitter" not in train
    assert _names(dm.eval_transform)[0] == "Resize" and "CenterCrop" not in _names(dm.eval_transform)
    logged = caplog.text
    assert "small-gray" in logged and "28x28" in logged and "grayscale" in logged  # the choice and its reason


def test_large_colour_folder_gets_the_photo_pipeline(tmp_path):
    _write_folder(tmp_path, (160, 120), "RGB")
    dm = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=96, val_fraction=0.25)
    assert dm.folder_pipeline.name == "photo-colour"
    assert _names(dm.train_transform)[:3] == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter"]
    assert _names(dm.eval_transform)[:2] == ["SmallestMaxSize", "CenterCrop"]
    # RandAugment changes colours itself: no colour jitter on top (as timm)
    aa = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=96, val_fraction=0.25,
                                  auto_augment="randaugment")
    assert "ColorJitter" not in _names(aa.train_transform) and "TorchvisionAutoAugment" in _names(aa.train_transform)


def test_gray_photos_saved_as_rgb_count_as_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "train" / "a")
    for i in range(4):
        gray = rng.integers(0, 255, (100, 120), dtype=np.uint8)
        Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB").save(tmp_path / "train" / "a" / f"{i}.png")
    stats = image_stats(sorted(str(p) for p in (tmp_path / "train" / "a").iterdir()))
    assert stats.grayscale and stats.modes == {"RGB": 4} and stats.median_size == (120, 100)
    choice = choose_folder_pipeline(stats, img_size=64)
    assert choice.name == "photo-gray" and not any(isinstance(t, (A.HorizontalFlip, A.ColorJitter))
                                                   for t in choice.train)


def test_explicit_train_transforms_are_used_unchanged(tmp_path):
    _write_folder(tmp_path, (28, 28), "L")
    steps = [{"name": "RandomResizedCrop", "size": [32, 32], "scale": [0.5, 1.0]}, {"name": "HorizontalFlip", "p": 0.5}]
    dm = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=32, val_fraction=0.25,
                                  train_transforms=steps)
    assert _names(dm.train_transform) == ["RandomResizedCrop", "HorizontalFlip", "Normalize", "ToTensorV2"]
    assert dm.train_transform.transforms[0].scale == (0.5, 1.0)
    assert _names(dm.eval_transform)[0] == "Resize"  # eval still gets the small-image default


def test_embedded_digits_written_as_files_give_the_same_tensors_and_labels(digits_folder):
    root, written = digits_folder
    assert written == {"train": 1258, "val": 180, "test": 359}
    embedded = ClassificationDataModule("digits", img_size=16)
    folder = ClassificationDataModule("imagefolder", root=str(root), img_size=16)
    assert folder.folder_pipeline.name == "small-gray" and folder.num_classes == 10
    a, b = embedded.get_dataset("test"), folder.get_dataset("test")
    by_index = {int(os.path.basename(path)[:-4]): i for i, (path, _) in enumerate(b.samples)}
    for j, name in enumerate(a.names[:60]):
        x_a, y_a = a[j]
        x_b, y_b = b[by_index[int(name.rsplit("/", 1)[-1])]]
        assert y_a == y_b
        torch.testing.assert_close(x_a, x_b)  # same pixels, same eval pipeline


def test_a_small_folder_is_cached_in_memory_and_serves_the_same_items(digits_folder):
    root, _ = digits_folder
    cached = ClassificationDataModule("imagefolder", root=str(root), img_size=16)
    plain = ClassificationDataModule("imagefolder", root=str(root), img_size=16, cache="none")
    cached.setup("test"), plain.setup("test")
    ds = cached.get_dataset("test")
    assert isinstance(ds.images, np.ndarray) and ds.images.shape == (359, 8, 8) and ds.images.dtype == np.uint8
    assert plain.get_dataset("test").images is None
    for i in range(0, 359, 37):
        torch.testing.assert_close(ds[i][0], plain.get_dataset("test")[i][0])


def test_auto_cache_respects_the_budget_and_ram_forces_it(digits_folder, caplog):
    root, _ = digits_folder
    with caplog.at_level(logging.INFO, logger="vitkit"):
        over = ClassificationDataModule("imagefolder", root=str(root), img_size=16, cache_budget_mb=0.01)
        over.setup("fit")
    assert over.get_dataset("train").images is None and "over data.cache_budget_mb" in caplog.text
    forced = ClassificationDataModule("imagefolder", root=str(root), img_size=16, cache="ram", cache_budget_mb=0.01)
    forced.setup("fit")
    assert forced.get_dataset("train").images is not None and forced.get_dataset("val").images is not None


def test_cache_of_a_corrupt_file_names_it_and_skip_corrupt_counts_it(tmp_path):
    _write_folder(tmp_path, (28, 28), "L", per_class=8)
    bad = tmp_path / "train" / "c1" / "broken.png"
    bad.write_bytes(b"not a png")
    dm = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=32, val_fraction=0.25, cache="ram")
    with pytest.raises(CorruptImageError, match="broken.png"):
        dm.setup("fit")
    skip = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=32, val_fraction=0.25, cache="ram",
                                    skip_corrupt=True)
    skip.setup("fit")
    assert [os.path.basename(p) for p, _ in skip.skipped] == ["broken.png"]
    assert len(skip.get_dataset("train")) + len(skip.get_dataset("val")) == 16


def test_bad_cache_settings_are_config_errors():
    with pytest.raises(ConfigError, match="data.cache: found 'disk'"):
        ClassificationDataModule("digits", cache="disk")
    with pytest.raises(ConfigError, match="data.cache_budget_mb"):
        ClassificationDataModule("digits", cache_budget_mb=-1)


def test_check_data_prints_the_folder_summary_the_pipeline_is_chosen_from(digits_folder, capsys):
    from vitkit.checkdata import main as check_data

    root, _ = digits_folder
    check_data(["--config", "configs/classification/vit_tiny_digits.yaml", "--data.init_args.dataset", "imagefolder",
                "--data.init_args.root", str(root)])
    out = capsys.readouterr().out
    assert "train: 1258 images in 10 classes" in out and "size median 8x8" in out and "modes L 1258" in out
    assert "default pipeline: small-gray" in out and "check-data OK" in out


def test_the_readme_command_trains_a_folder_of_digit_pngs_with_data_flags_only(digits_folder, tmp_path, caplog):
    """The short CI version of benchmarks/folder_accuracy.py: a few dozen steps on which the loss must fall."""
    import csv
    from pathlib import Path

    from vitkit.cli import main

    root, _ = digits_folder
    config = str(Path(__file__).resolve().parents[1] / "configs/classification/digits_speedrun.yaml")
    with caplog.at_level(logging.INFO, logger="vitkit"):
        main(["fit", "--config", config, "--data.init_args.dataset", "imagefolder", "--data.init_args.root", str(root),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "2",
              "--trainer.log_every_n_steps", "1",
              "--test_after_fit", "false", "--trainer.enable_progress_bar", "false"])
    assert "Default pipeline small-gray" in caplog.text and "decoded into memory" in caplog.text  # shown to the user
    (metrics,) = tmp_path.glob("digits_speedrun/version_*/metrics.csv")
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 36 and np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    assert max(float(r["val/acc"]) for r in rows if r.get("val/acc")) > 0.3  # well above chance (0.1) in 2 epochs
    # the checkpoint remembers the pipeline, so `vitkit explain` evaluates images as testing did (whole, no crop)
    from vitkit.explain.tasks import eval_pipeline

    ckpt = torch.load(metrics.parent / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["ClassificationDataModule"] == {"folder_pipeline": "small-gray"}
    transform, _, _ = eval_pipeline(ckpt, (16, 16))
    assert _names(transform) == ["Resize", "Resize", "Normalize", "ToTensorV2"]


def test_a_folder_of_unreadable_files_is_one_clear_error_naming_it(tmp_path):
    for c in ("a", "b"):
        os.makedirs(tmp_path / "train" / c)
        for i in range(3):
            (tmp_path / "train" / c / f"{i}.png").write_bytes(b"not an image")
    dm = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=16, val_fraction=0.34)
    with pytest.raises(CorruptImageError, match=r"train/a/\d\.png: cannot decode image .*data.skip_corrupt: true"):
        dm.setup("fit")
    skip = ClassificationDataModule("imagefolder", root=str(tmp_path), img_size=16, val_fraction=0.34,
                                    skip_corrupt=True)
    with pytest.raises(DataError, match=r"train: all 6 images are unreadable \(data.skip_corrupt: true dropped them\)"):
        skip.setup("fit")
