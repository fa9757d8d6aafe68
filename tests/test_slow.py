"""Long end-to-end runs (`pytest -m slow`): the README's main job reaches its stated accuracy."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vitkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_digits_config_reaches_97_percent(tmp_path):
    """README command 1: the digits config, trained in full (about 5 minutes on 2 CPU cores)."""
    main(["fit", "--config", str(ROOT / "configs/classification/vit_tiny_digits.yaml"),
          "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    with open(tmp_path / "vit_tiny_digits/version_0/metrics.csv") as f:
        test_acc = [float(r["test/acc"]) for r in csv.DictReader(f) if r.get("test/acc")]
    assert test_acc and test_acc[-1] >= 0.97
