"""The fault-tolerance callbacks are task-agnostic: for segmentation, detection and the text path too, a real
SIGTERM mid-epoch saves a checkpoint and the resumed run ends with exactly the weights of an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--test_after_fit", "false",
         "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.log_every_n_steps", "1"]
TASKS = {
    "segmentation": ("configs/segmentation/shapes_segmenter.yaml", lambda data: [
        "--data.init_args.root", str(data), "--data.init_args.shapes", '{"num_train": 32, "num_val": 4, "num_test": 4}',
        "--data.init_args.batch_size", "8", "--model.init_args.num_visualize", "0",
        "--model.init_args.model_kwargs",
        '{"encoder_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}, "head_kwargs": {"depth": 1}}']),
    "detection": ("configs/detection/shapes_detr_nano.yaml", lambda data: [
        "--data.init_args.root", str(data), "--data.init_args.img_size", "32", "--data.init_args.batch_size", "8",
        "--data.init_args.shapes_config", json.dumps({"img_size": 32, "min_shapes": 0, "max_shapes": 2, "min_size": 8,
                                                      "max_size": 14, "num_train": 32, "num_val": 4, "num_test": 4}),
        "--model.init_args.num_draw", "0", "--model.init_args.model_kwargs", json.dumps(
            {"depth": 1, "embed_dim": 64, "num_heads": 2, "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 2,
             "num_queries": 8})]),
    "text": ("configs/seq2seq/numbers_tiny.yaml", lambda data: [
        "--data.init_args.root", str(data), "--data.init_args.num_train", "200", "--data.init_args.batch_size", "32",
        "--model.init_args.max_new_tokens", "8",
        "--model.init_args.model_kwargs",
        '{"dim": 32, "enc_depth": 1, "dec_depth": 1, "num_heads": 2, "dropout": 0.1}']),
}


def fit(task: str, root: Path, data: Path, *extra: str) -> None:
    config, args = TASKS[task]
    main(["fit", "--config", str(ROOT / config), "--trainer.default_root_dir", str(root), "--run_name", task,
          *args(data), *QUIET, *extra])


def last(root: Path, task: str) -> dict:
    return torch.load(root / task / "version_0" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


@pytest.mark.parametrize("task", [pytest.param("segmentation", marks=pytest.mark.slow),
                                  pytest.param("detection", marks=pytest.mark.slow),
                                  pytest.param("text", marks=pytest.mark.slow)])
def test_sigterm_mid_epoch_then_resume_is_exact(task, tmp_path):
    data = tmp_path / "data"
    fit(task, tmp_path / "a", data)
    with pytest.raises(SystemExit) as stopped:
        fit(task, tmp_path / "b", data, "--trainer.callbacks+",
            '{"class_path": "test_faults.SigtermAt", "init_args": {"step": 4}}')
    assert stopped.value.code in (None, 0) and last(tmp_path / "b", task)["global_step"] == 4
    assert last(tmp_path / "b", task)["vitkit"]["task"].startswith("vitkit.tasks.")
    fit(task, tmp_path / "b", data, "--ckpt_path", "last")
    a, b = last(tmp_path / "a", task), last(tmp_path / "b", task)
    assert a["global_step"] == b["global_step"] == 6
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
