"""The command line as a user drives it: fit, resume from `last`, test, predict, and clear errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/classification/vit_tiny_digits.yaml")
TINY = ["--model.init_args.model_kwargs", '{"depth": 1, "embed_dim": 64, "num_heads": 2}',
        "--data.init_args.img_size", "16"]


def run(sub: str, tmp: Path, *extra: str) -> None:
    main([sub, "--config", DIGITS, "--trainer.default_root_dir", str(tmp), *TINY, *extra])


def fit_args(epochs: int) -> list[str]:
    return ["--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "2", "--test_after_fit", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """One short fit from the digits config; returns the run folder."""
    tmp = tmp_path_factory.mktemp("runs")
    run("fit", tmp, *fit_args(1))
    return tmp / "vit_tiny_digits" / "version_0"


def test_fit_writes_logs_checkpoints_and_config(fitted):
    with open(fitted / "metrics.csv") as f:
        cols = set(csv.DictReader(f).fieldnames)
    assert {"train/loss", "val/loss", "val/acc", "val/acc_top5", "epoch", "step"} <= cols
    ckpts = {p.name for p in (fitted / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert list(fitted.glob("events.out.tfevents.*")), "TensorBoard logs share the run folder"
    assert "vitkit.tasks.ImageClassifier" in (fitted / "config.yaml").read_text()


def test_resume_from_last_continues_steps_and_optimizer(fitted):
    tmp = fitted.parents[1]
    before = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert before["global_step"] == 3
    run("fit", tmp, *fit_args(2), "--ckpt_path", "last")
    after = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert after["global_step"] == 6 and after["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == 2
    adam_steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert adam_steps == {6.0}, "AdamW state continued from the checkpoint instead of restarting"
    assert after["lr_schedulers"][0]["last_epoch"] == 6
    assert not (tmp / "vit_tiny_digits" / "version_1").exists(), "resume continues in the same run folder"
    with open(fitted / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("val/acc")}
    assert epochs == {"0", "1"}, "metrics of the first epoch are kept in metrics.csv after resuming"


def test_test_subcommand_reports_metrics_and_confusion_matrix(fitted, tmp_path):
    run("test", tmp_path, "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
        "--trainer.enable_progress_bar", "false")
    out = tmp_path / "vit_tiny_digits" / "version_0"
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.0 <= float(row["test/acc"]) <= float(row["test/acc_top5"]) <= 1.0
    assert (out / "confusion_matrix.png").exists() and (out / "per_class_accuracy.csv").exists()


def test_predict_writes_predictions_for_a_folder(fitted, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    run("predict", tmp_path, "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
        "--data.init_args.predict_dir", str(images), "--trainer.enable_progress_bar", "false")
    out = tmp_path / "vit_tiny_digits" / "version_0"
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == [f"img{i}.png" for i in range(5)]
    assert all(r["label_1"] in [str(d) for d in range(10)] and 0 < float(r["prob_1"]) <= 1 for r in rows)
    assert len(json.loads((out / "predictions.json").read_text())) == 5


def test_ckpt_path_last_without_a_previous_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", tmp_path, *fit_args(1), "--ckpt_path", "last")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no last.ckpt under" in err and "vit_tiny_digits" in err


def test_missing_dataset_root_is_one_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", tmp_path, "--data.init_args.dataset", "cifar10", "--data.init_args.root", str(tmp_path / "nowhere"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "download" in err and "Traceback" not in err


def test_img_size_not_divisible_by_patch_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path),
              "--data.init_args.img_size", "30"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "img_size (30, 30) is not divisible by patch_size (4, 4)" in err and "img_size=32" in err
    assert "Traceback" not in err


def test_print_config_shows_linked_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", DIGITS, "--print_config"])
    out = capsys.readouterr().out
    assert "class_path: vitkit.tasks.ImageClassifier" in out and "dataset: digits" in out


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """An ImageFolder with RGB JPEGs, a grayscale PNG, an RGBA PNG and one truncated JPEG."""
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(
                tmp_path / "train" / cls / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / "train/cats/gray.png")
    Image.fromarray(rng.integers(0, 255, (24, 24, 4), dtype=np.uint8), mode="RGBA").save(
        tmp_path / "train/dogs/rgba.png")
    data = (tmp_path / "train/cats/0.jpg").read_bytes()
    (tmp_path / "train/dogs/broken.jpg").write_bytes(data[: len(data) // 2])
    return tmp_path


def folder_args(root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/classification/vit_imagefolder.yaml"), "--run_name", "messy",
            "--trainer.default_root_dir", str(root / "runs"), "--data.init_args.root", str(root),
            "--data.init_args.img_size", "16", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--data.init_args.val_fraction", "0.3",
            "--model.init_args.model", "vit_tiny_patch4_32", "--model.init_args.model_kwargs", '{"depth": 1}',
            "--trainer.precision", "32", "--trainer.max_epochs", "1", "--test_after_fit", "false",
            "--trainer.enable_progress_bar", "false", *extra]


def test_imagefolder_with_gray_rgba_and_corrupt_images_trains_when_skipping(messy_folder, caplog):
    main(folder_args(messy_folder, "--data.init_args.skip_corrupt", "true"))
    assert "skipped 1 unreadable image(s)" in caplog.text and "broken.jpg" in caplog.text
    with open(messy_folder / "runs/messy/version_0/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val/acc"]) <= 1.0


def test_imagefolder_corrupt_image_without_skipping_names_the_file(messy_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(folder_args(messy_folder))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skip_corrupt" in err and "Traceback" not in err
