"""`vitkit export` as a user meets it: each task's checkpoint becomes an ONNX file (and a .pt2 program) whose
outputs match the Lightning module at the trained size and at another batch and image size; the runtime helper
predicts what `predict_step` returns; an unexportable layer and bad arguments end in one clear error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from vitkit.errors import CheckpointError, ConfigError
from vitkit.export import ExportedModel, ExportError
from vitkit.export.command import main as export
from vitkit.export.formats import trace
from vitkit.tasks import ImageClassifier, ObjectDetector, SemanticSegmenter

TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def save(task: pl.LightningModule, folder: Path) -> Path:
    """A Lightning-format checkpoint of `task` in <folder>/run/checkpoints (as `fit` leaves it)."""
    path = folder / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    hparams = dict(task.hparams)
    hparams["_class_path"] = f"{type(task).__module__}.{type(task).__name__}"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__,
                "datamodule_hyper_parameters": {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}}, path)
    return path


def classifier() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("vit_tiny_patch4_32", num_classes=5, img_size=16, model_kwargs=TINY_VIT, top_k=3,
                           class_names=list("abcde"))


def parity(ckpt: Path) -> list[dict]:
    return json.loads(ckpt.parents[1].joinpath("export", "model.json").read_text())["parity"]


def images(n: int, size=(20, 28)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["onnx", "exported-program"])
def test_classifier_export_matches_eager_at_two_sizes(tmp_path, fmt, capsys):
    ckpt = save(classifier(), tmp_path)
    export(["--ckpt", str(ckpt), "--format", fmt, "--dynamic", "batch,size"])
    out = ckpt.parents[1] / "export"
    stem = "model" if fmt == "onnx" else "program"
    meta = json.loads((out / f"{stem}.json").read_text())
    assert meta["task"] == "classification" and meta["image_size"] == [16, 16] and meta["class_names"] == list("abcde")
    assert [r["input"] for r in meta["parity"]] == ["2x3x16x16", "3x3x20x24"]
    assert all(r["max_abs_diff"] < 1e-4 for r in meta["parity"])
    assert "max |diff|" in capsys.readouterr().out
    model = ExportedModel(out / f"{stem}{'.onnx' if fmt == 'onnx' else '.pt2'}")
    assert model.run(np.zeros((1, 3, 32, 24), np.float32))["logits"].shape == (1, 5)  # a third size and batch


def test_runtime_predict_equals_predict_step(tmp_path):
    task = classifier().eval()
    ckpt = save(task, tmp_path)
    export(["--ckpt", str(ckpt), "--out", str(tmp_path / "exp")])
    model = ExportedModel(tmp_path / "exp" / "model.onnx")
    pics = images(3)
    pixels = model.preprocess(pics)
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == np.float32
    want = task.predict_step((torch.from_numpy(pixels), ["p0", "p1", "p2"]), 0)
    got = model.predict(pics)
    for g, w in zip(got, want):
        assert g["labels"] == w["labels"]
        np.testing.assert_allclose(g["probs"], w["probs"], atol=1e-5)


def test_segmenter_export_matches_eager_at_two_sizes(tmp_path):
    torch.manual_seed(0)
    task = SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32, class_names=["bg", "a", "b"],
                             model_kwargs={"encoder_kwargs": TINY_VIT, "head_kwargs": {"depth": 1}})
    ckpt = save(task, tmp_path)
    for fmt in ("onnx", "exported-program"):
        export(["--ckpt", str(ckpt), "--format", fmt, "--dynamic", "batch,size"])
    rows = parity(ckpt)
    assert {r["input"] for r in rows} == {"2x3x32x32", "3x3x40x48"}
    assert all(r["max_abs_diff"] < 1e-4 for r in rows)
    model = ExportedModel(ckpt.parents[1] / "export" / "program.pt2")
    assert model.run(np.zeros((1, 3, 40, 48), np.float32))["logits"].shape == (1, 3, 40, 48)  # at the input size
    (pred,) = model.predict(images(1, size=(30, 50)))
    assert np.asarray(pred["mask"]).shape == (30, 50) and abs(sum(pred["fractions"].values()) - 1) < 1e-4


@pytest.mark.parametrize("model,kwargs", [
    ("detr_vit_nano_patch8_64", {"depth": 1, "embed_dim": 32, "num_heads": 2, "decoder_dim": 32, "decoder_depth": 1,
                                 "decoder_heads": 2, "num_queries": 4}),
    ("yolos_nano_patch8_64", {"depth": 1, "embed_dim": 32, "num_heads": 2, "num_det_tokens": 4}),
])
def test_detector_export_has_boxes_scores_labels_in_the_graph(tmp_path, model, kwargs):
    torch.manual_seed(0)
    task = ObjectDetector(model, num_classes=2, img_size=32, model_kwargs=kwargs, top_k=5, display_threshold=0.0)
    ckpt = save(task, tmp_path)
    export(["--ckpt", str(ckpt), "--dynamic", "batch"])
    rows = parity(ckpt)
    assert [r["output"] for r in rows] == ["boxes", "scores", "labels"] * 2
    assert all(r["max_abs_diff"] < 1e-4 for r in rows)
    runtime = ExportedModel(ckpt.parents[1] / "export" / "model.onnx")
    pics = images(1, size=(16, 32))
    (pred,) = runtime.predict(pics)  # letterboxed: boxes back in the 32x16 image's pixels
    scores = runtime.run(runtime.preprocess(pics))["scores"][0]
    assert len(scores) == 8  # top-k (the task's top_k=100 default: runtime settings stay out of checkpoints) of 4x2
    assert len(pred["detections"]) == int((scores >= runtime.meta["display_threshold"]).sum()) > 0
    for d in pred["detections"]:
        x, y, w, h = d["bbox"]
        assert 0 <= x and x + w <= 32.01 and 0 <= y and y + h <= 16.01
    with pytest.raises(ConfigError, match="letterboxed"):
        export(["--ckpt", str(ckpt), "--dynamic", "size"])


class Unexportable(nn.Module):
    """A layer whose forward branches on a tensor's value: no static graph can hold that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def test_unexportable_layer_gives_one_error_naming_it():
    graph = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Unexportable()))
    with pytest.raises(ExportError, match=r"module '1\.1' \(Unexportable\)"):
        trace(graph, (torch.randn(2, 4),))


def test_bad_arguments_give_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        export(["--ckpt", str(tmp_path / "missing.ckpt")])
    with pytest.raises(ConfigError, match="--format 'tflite'"):
        export(["--ckpt", "x.ckpt", "--format", "tflite"])
    with pytest.raises(ConfigError, match="--dynamic 'height'"):
        export(["--ckpt", "x.ckpt", "--dynamic", "height"])
    (tmp_path / "labels.json").write_text('{"classes": ["a", "b"]}')  # some other tool's JSON
    with pytest.raises(CheckpointError, match=r"labels\.json: found \['classes'\]; expected the metadata"):
        ExportedModel(tmp_path / "labels.json")


@pytest.mark.parametrize("model,patch", [("vit_small_patch16_rope_224", 8), ("vit_small_patch16_rope_mixed_224", 8),
                                         ("vit_small_patch16_dinov3", 8), ("vit_small_patch14_reg4_dinov2", 14)])
def test_pretrained_families_export_with_dynamic_size(tmp_path, model, patch):
    """RoPE tables (axial, mixed, DINOv3) are built in the graph for the input's grid, not cached at the trace's."""
    torch.manual_seed(0)
    task = ImageClassifier(model, num_classes=3, img_size=2 * patch, model_kwargs={**TINY_VIT, "patch_size": patch})
    ckpt = save(task, tmp_path)
    export(["--ckpt", str(ckpt), "--dynamic", "batch,size"])
    rows = parity(ckpt)
    assert [r["input"] for r in rows] == [f"2x3x{2 * patch}x{2 * patch}", f"3x3x{3 * patch}x{4 * patch}"]
    assert all(r["max_abs_diff"] < 1e-4 for r in rows)


@pytest.mark.parametrize("build", [
    lambda: SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32, model_kwargs={
        "encoder": "timm:vit_tiny_patch16_224", "encoder_kwargs": {"depth": 1, "patch_size": 8},
        "head_kwargs": {"depth": 1}}),
    lambda: ObjectDetector("detr_vit_nano_patch8_64", num_classes=2, img_size=32, model_kwargs={
        "encoder": "timm:vit_tiny_patch16_224", "encoder_kwargs": {"depth": 1, "patch_size": 8}, "decoder_dim": 32,
        "decoder_depth": 1, "decoder_heads": 2, "num_queries": 4}),
], ids=["segmenter", "detr"])
def test_tasks_on_a_timm_encoder_export(tmp_path, build):
    torch.manual_seed(0)
    ckpt = save(build(), tmp_path)
    export(["--ckpt", str(ckpt), "--dynamic", "batch"])
    assert all(r["max_abs_diff"] < 1e-4 for r in parity(ckpt))
