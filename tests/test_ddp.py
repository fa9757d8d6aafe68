"""Several processes: a 2-process DDP fit on CPU (gloo, `ddp_spawn`) with half the per-rank batch trains like one
process over the same data — same weights to float rounding and the same validation accuracy, with metrics
synced across ranks and each rank reading its own shard."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from vitkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/classification/vit_tiny_digits.yaml")
# deterministic pre-processing: augmentation randomness is per process and would differ between the two runs
ARGS = ["--model.init_args.model_kwargs",
        '{"depth": 1, "embed_dim": 64, "num_heads": 2, "global_pool": "avg", "class_token": false}',
        "--data.init_args.img_size", "16",
        "--data.init_args.train_transforms", '[{"name": "Resize", "height": 16, "width": 16, "interpolation": 2}]',
        "--model.init_args.lr", "3e-3", "--model.init_args.warmup_epochs", "0.25", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "20", "--trainer.accelerator", "cpu", "--test_after_fit", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1"]


def fit(root: Path, *extra: str) -> Path:
    main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(root), *ARGS, *extra])
    return root / "vit_tiny_digits" / "version_0"


def val_metrics(run: Path) -> dict[str, tuple[float, float]]:
    with open(run / "metrics.csv") as f:
        return {r["epoch"]: (float(r["val/acc"]), float(r["val/loss"])) for r in csv.DictReader(f) if r.get("val/acc")}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_process_ddp_matches_one_process(tmp_path):
    single = fit(tmp_path / "single", "--data.init_args.batch_size", "32")
    ddp = fit(tmp_path / "ddp", "--data.init_args.batch_size", "16", "--trainer.strategy", "ddp_spawn",
              "--trainer.devices", "2")
    a = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    for k, v in a["state_dict"].items():  # the gradient all-reduce sums in another order than one big batch:
        # rounding only, except for the key bias, whose true gradient is 0 (softmax ignores it) so that AdamW
        # turns rounding noise into steps of size ~lr
        atol = 1e-3 if k.endswith("attn.qkv.bias") else 1e-6
        torch.testing.assert_close(b["state_dict"][k], v, atol=atol, rtol=1e-5)
    metrics_single, metrics_ddp = val_metrics(single), val_metrics(ddp)
    assert set(metrics_single) == set(metrics_ddp) == {"0", "1"}
    for epoch, (acc, loss) in metrics_single.items():  # over all 180 validation images, synced across both ranks
        acc_ddp, loss_ddp = metrics_ddp[epoch]
        assert acc_ddp == pytest.approx(acc, abs=1 / 180 + 1e-6) and loss_ddp == pytest.approx(loss, abs=1e-4)
        assert round(acc_ddp * 180, 3).is_integer()
    acc_single = {e: acc for e, (acc, _) in metrics_single.items()}
    assert acc_single["1"] > 0.2, "training moved the model off chance, so the comparison means something"


@pytest.mark.slow
@pytest.mark.parametrize("config, extra", [
    ("configs/segmentation/shapes_segmenter.yaml",
     ["--data.init_args.shapes", '{"num_train": 32, "num_val": 4, "num_test": 4}', "--data.init_args.batch_size", "4",
      "--model.init_args.num_visualize", "2",
      "--model.init_args.model_kwargs",
      '{"encoder_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}, "head_kwargs": {"depth": 1}}']),
    ("configs/detection/shapes_detr_nano.yaml",
     ["--data.init_args.img_size", "32", "--data.init_args.batch_size", "4", "--model.init_args.num_draw", "2",
      "--data.init_args.shapes_config",
      ('{"img_size": 32, "max_shapes": 2, "min_size": 8, "max_size": 14, "num_train": 32, "num_val": 4, '
       '"num_test": 4}'),
      "--model.init_args.model_kwargs",
      ('{"depth": 1, "embed_dim": 64, "num_heads": 2, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2, '
       '"num_queries": 8}')]),
])
def test_other_tasks_fit_and_test_under_ddp(config, extra, tmp_path):
    """Fit then test with 2 processes: reports written on rank zero do not stall the other rank."""
    main(["fit", "--config", str(ROOT / config), "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--run_name", "ddp",
          "--data.init_args.root", str(tmp_path / "data"), "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2",
          "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--test_after_fit", "true", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", *extra])
    run = tmp_path / "runs" / "ddp" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "runs" / "ddp" / "version_1").exists()
    with open(run / "metrics.csv") as f:
        assert any(k.startswith("test/") for k in csv.DictReader(f).fieldnames)
