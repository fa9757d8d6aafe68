"""Every pretrained family as the encoder of every task: the segmenter, the DETR-style detector, YOLOS and the
captioner build on each family's smallest layout (shrunk to a CPU size) and a few optimiser steps on one batch
lower their loss; dense heads see any input size with `dynamic_img_size`; YOLOS refuses RoPE encoders by name;
the segmentation CLI takes `encoder: vit_small_patch14_dinov2` from YAML."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.models import CaptionTransformer
from vitkit.models.segmenter import build_segmenter
from vitkit.tasks.detection import SetCriterion
from vitkit.tasks.matcher import HungarianMatcher

# one name per family (its smallest registered size), with the patch size that sets the image size
FAMILIES = {
    "vit_small_patch14_dinov2": 14,
    "vit_small_patch14_reg4_dinov2": 14,
    "deit3_small_patch16_224": 16,
    "vit_base_patch16_clip_quickgelu_224": 16,
    "vit_base_patch16_siglip_224": 16,
    "eva02_tiny_patch14_224": 14,
    "vit_small_patch16_rope_224": 16,
    "vit_small_patch16_rope_mixed_224": 16,
    "vit_small_patch16_dinov3": 16,
}
ROPE = {"vit_small_patch16_rope_224", "vit_small_patch16_rope_mixed_224", "vit_small_patch16_dinov3",
        "eva02_tiny_patch14_224"}
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4}


def image_size(name: str) -> int:
    return 3 * FAMILIES[name]  # a 3 x 3 patch grid


def falls(step, n: int = 8) -> tuple[float, float]:
    """Run `step()` (returns the loss) n times under Adam; first and last loss."""
    losses = [step() for _ in range(n)]
    return losses[0], losses[-1]


def train(model: torch.nn.Module, loss_fn, n: int = 8, lr: float = 2e-3) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> float:
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return falls(step, n)


def boxes(n: int, classes: int = 3) -> dict[str, torch.Tensor]:
    centre, wh = torch.rand(n, 2) * 0.5 + 0.25, torch.rand(n, 2) * 0.3 + 0.1
    return {"labels": torch.randint(classes, (n,)), "boxes": torch.cat([centre, wh], 1)}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", FAMILIES)
def test_segmenter_trains_on_each_family(name):
    size = image_size(name)
    model = build_segmenter(name, 3, size, head="linear", encoder_kwargs=TINY)
    x, y = torch.randn(2, 3, size, size), torch.zeros(2, size, size, dtype=torch.long)
    y[:, : size // 2] = 1  # a layout the head can fit from the patch positions
    y[1, :, : size // 3] = 2
    assert model(x).shape == (2, 3, size, size)
    first, last = train(model, lambda: F.cross_entropy(model(x), y))
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("name", FAMILIES)
def test_detr_trains_on_each_family(name):
    size = image_size(name)
    model = vitkit.create_model("detr_vit_nano_patch8_64", num_classes=3, img_size=size, encoder=name,
                                encoder_kwargs=TINY, num_queries=6, decoder_depth=1)
    criterion = SetCriterion(3, HungarianMatcher())
    x, targets = torch.randn(2, 3, size, size), [boxes(2), boxes(1)]
    first, last = train(model, lambda: criterion(model(x, targets), targets)["loss"])
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - ROPE))
def test_yolos_trains_on_each_learned_position_family(name):
    size = image_size(name)
    model = vitkit.create_model("yolos_tiny", num_classes=3, img_size=size, encoder=name, encoder_kwargs=TINY,
                                num_det_tokens=6)
    criterion = SetCriterion(3, HungarianMatcher())
    x, targets = torch.randn(2, 3, size, size), [boxes(2), boxes(1)]
    first, last = train(model, lambda: criterion(model(x), targets)["loss"])
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("name", sorted(ROPE))
def test_yolos_refuses_a_rope_encoder_by_name(name):
    with pytest.raises(ValueError, match=rf"{name}.*rotary.*detr_vit"):
        vitkit.create_model("yolos_tiny", num_classes=3, img_size=image_size(name), encoder=name,
                            encoder_kwargs=TINY)


@pytest.mark.parametrize("name", FAMILIES)
def test_captioner_trains_on_each_family(name):
    size = image_size(name)
    model = CaptionTransformer(vocab_size=30, encoder=name, img_size=size, encoder_kwargs=TINY, dim=32, depth=1,
                               num_heads=2, max_len=8, dropout=0.0)
    x, tokens = torch.randn(2, 3, size, size), torch.randint(4, 30, (2, 8))
    first, last = train(model, lambda: F.cross_entropy(model(x, tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()))
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch16_dinov3"])
def test_segmenter_takes_any_size_with_dynamic_img_size(name):
    patch = FAMILIES[name]
    model = build_segmenter(name, 3, image_size(name), head="linear",
                            encoder_kwargs={**TINY, "dynamic_img_size": True}).eval()
    for h, w in [(2 * patch, 5 * patch), (4 * patch, 3 * patch)]:
        assert model(torch.randn(1, 3, h, w)).shape == (1, 3, h, w)


def test_segmentation_cli_fine_tunes_a_dinov2_encoder_from_yaml(tmp_path):
    """`model_kwargs: {encoder: vit_small_patch14_dinov2}` in YAML: the shapes config runs with that encoder at a
    size its 14-pixel patch divides, and the loss falls."""
    from vitkit.cli import main

    root = Path(__file__).resolve().parents[1]
    config = tmp_path / "dinov2.yaml"
    config.write_text(
        "model:\n  init_args:\n    model_kwargs:\n      encoder: vit_small_patch14_dinov2\n      head: linear\n"
        "      encoder_kwargs: {embed_dim: 48, depth: 1, num_heads: 2}\n"
    )
    main(["fit", "--config", str(root / "configs/segmentation/shapes_segmenter.yaml"), "--config", str(config),
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.init_args.root", str(tmp_path / "data"),
          "--data.init_args.shapes", '{"num_train": 32, "num_val": 8, "num_test": 8, "img_size": 56}',
          "--data.init_args.img_size", "56", "--data.init_args.batch_size", "8", "--trainer.max_steps", "24",
          "--trainer.log_every_n_steps", "1", "--model.init_args.lr", "4e-3", "--model.init_args.num_visualize", "0",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    run = tmp_path / "runs" / "dinov2" / "version_0"  # the run is named after the last config file
    with open(run / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 24
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4]), losses
    hparams = (run / "config.yaml").read_text()
    assert "vit_small_patch14_dinov2" in hparams
