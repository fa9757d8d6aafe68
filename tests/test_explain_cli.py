"""`vitkit explain` and the picture reports as a user meets them: a short CLI fit leaves training curves and a
test gallery in the run folder; explain writes overlays, layer grids and .npy maps for a folder of images,
with the same maps as the library; bad input ends in one clear message."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.callbacks import PredictionGallery, curve_panels, read_metrics
from vitkit.cli import main
from vitkit.data import load_rgb
from vitkit.explain import explain_classifier
from vitkit.explain.command import load_task
from vitkit.explain.tasks import eval_pipeline
from vitkit.tasks.classification import classification_items

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/classification/vit_tiny_digits.yaml")
TINY = ["--model.init_args.model_kwargs", '{"depth": 2, "embed_dim": 32, "num_heads": 2}',
        "--data.init_args.img_size", "16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A two-epoch fit (3 steps each) then test through the CLI; the run folder."""
    tmp = tmp_path_factory.mktemp("runs")
    main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp), *TINY, "--trainer.max_epochs", "2",
          "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
          "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--test_after_fit", "true"])
    return tmp / "vit_tiny_digits" / "version_0"


@pytest.fixture(scope="module")
def images(tmp_path_factory, write_digit_pngs) -> Path:
    """Three real digits as 24x24 PNGs in a folder (another size than the model's 16: explain resizes)."""
    return write_digit_pngs(tmp_path_factory.mktemp("digits"), 3)


def explain(*args: str) -> None:
    main(["explain", *args])


def test_fit_plots_training_curves_and_test_writes_a_gallery(run_dir):
    series = read_metrics(run_dir / "metrics.csv")
    assert len(series["train/loss"][0]) == 6 and len(series["val/acc"][0]) == 2  # what the curves show
    assert {"loss", "acc", "learning rate"} <= set(curve_panels(list(series)))
    for name in ("training_curves.png", "test_gallery.png"):
        with Image.open(run_dir / name) as im:
            assert im.width > 400 and im.height > 200


@pytest.mark.parametrize("method", ["rollout", "attention", "grad"])
def test_explain_a_folder_writes_overlays_grids_and_maps(run_dir, images, method):
    explain("--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), str(images), "--method", method)
    out = run_dir / "explain"  # next to the run's logs by default
    with open(out / f"explanations_{method}.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == ["d0.png", "d1.png", "d2.png"]
    assert all(r["predicted"] in [str(d) for d in range(10)] and 0 < float(r["probability"]) <= 1 for r in rows)
    for i in range(3):
        stem = f"d{i}_{method}"
        assert (out / f"{stem}.png").stat().st_size > 5000 and (out / f"{stem}_layers.png").stat().st_size > 5000
        assert np.load(out / f"{stem}.npy").shape == (4, 4)  # 16 px / 4 px patches
        layers = np.load(out / f"{stem}_layers.npy")
        assert layers.shape == ((2, 2, 4, 4) if method == "attention" else (2, 4, 4))  # (layers, [heads,] grid)


def test_explain_maps_are_the_library_maps_of_the_checkpoint(run_dir, images, tmp_path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    explain("--ckpt", str(ckpt), str(images / "d1.png"), "--method", "grad", "--target", "7", "--out", str(tmp_path))
    task, raw = load_task(str(ckpt))
    transform, _, _ = eval_pipeline(raw, (16, 16))
    x = transform(image=load_rgb(images / "d1.png"))["image"][None]
    expected = explain_classifier(task.net, x, "grad", target=7).heatmap[0]
    np.testing.assert_allclose(np.load(tmp_path / "d1_grad.npy"), expected.numpy(), rtol=1e-5, atol=1e-7)
    with open(tmp_path / "explanations_grad.csv") as f:
        assert next(csv.DictReader(f))["target"] == "7"


def test_train_py_explain_goes_to_the_explain_command(run_dir, images, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "explain", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
                                      str(images / "d0.png"), "--out", str(tmp_path)])
    main()
    assert (tmp_path / "d0_rollout.png").exists()


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        explain(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_inputs_are_one_clear_message(run_dir, images, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert "nowhere.ckpt (--ckpt): file not found" in _error(capsys, "--ckpt", str(tmp_path / "nowhere.ckpt"),
                                                             str(images))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert "junk.ckpt (--ckpt): cannot read it weights-only" in _error(capsys, "--ckpt", str(junk), str(images))
    weights = tmp_path / "weights.pth"
    torch.save({"head.weight": torch.zeros(2, 2)}, weights)
    assert "expected a Lightning checkpoint" in _error(capsys, "--ckpt", str(weights), str(images))
    err = _error(capsys, "--ckpt", ckpt, str(images), "--target", "cat")
    assert "--target 'cat'" in err and "0..9" in err
    assert "no such file or folder" in _error(capsys, "--ckpt", ckpt, str(tmp_path / "missing.png"))


def test_unreadable_images_stop_the_run_or_are_skipped_and_counted(run_dir, images, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.open(images / "d0.png").save(folder / "good.png")
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert "broken.png: cannot decode image" in _error(capsys, "--ckpt", ckpt, str(folder),
                                                       "--out", str(tmp_path / "a"))
    explain("--ckpt", ckpt, str(folder), "--out", str(tmp_path / "b"), "--skip-corrupt")
    out = capsys.readouterr().out
    assert "explained 1 image(s)" in out and "skipped 1 unreadable image(s)" in out and "broken.png" in out
    assert (tmp_path / "b" / "good_rollout.png").exists() and not list((tmp_path / "b").glob("broken*"))


def test_gallery_keeps_the_most_and_least_confident_in_the_true_class(tmp_path):
    gallery = PredictionGallery(k=2)
    trainer = SimpleNamespace(is_global_zero=True, log_dir=str(tmp_path), default_root_dir=str(tmp_path),
                              datamodule=None)
    names = ["a", "b", "c"]
    module = SimpleNamespace(gallery_items=lambda batch, outputs: classification_items(outputs, batch, names))
    gallery.on_test_epoch_start(trainer, module)
    p_true = [0.9, 0.2, 0.6, 0.05, 0.99, 0.4]  # probability of the true class (class 0) per image
    for start in (0, 3):  # two batches of three
        p = torch.tensor(p_true[start : start + 3])
        probs = torch.stack([p, (1 - p) * 0.7, (1 - p) * 0.3], dim=1)
        images = torch.arange(start, start + 3).float().view(3, 1, 1, 1).expand(3, 3, 4, 4)  # image i is filled with i
        gallery.on_test_batch_end(trainer, module, probs.log(), (images, torch.zeros(3, dtype=torch.long)), start // 3)
    best = [(round(s, 2), int(img[0, 0, 0])) for s, _, img, _ in sorted(gallery._best, reverse=True)]
    worst = [(round(-s, 2), int(img[0, 0, 0])) for s, _, img, _ in sorted(gallery._worst, reverse=True)]
    assert best == [(0.99, 4), (0.9, 0)] and worst == [(0.05, 3), (0.2, 1)]
    gallery.on_test_epoch_end(trainer, module)
    assert gallery.path == tmp_path / "test_gallery.png" and gallery.path.stat().st_size > 5000


# --------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def detector_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny DETR-style ObjectDetector saved as LightningCLI saves a checkpoint."""
    import pytorch_lightning as pl

    from vitkit.tasks import ObjectDetector

    torch.manual_seed(0)
    kw = dict(depth=1, embed_dim=32, num_heads=2, decoder_dim=32, decoder_depth=2, decoder_heads=2, num_queries=10)
    task = ObjectDetector("detr_vit_nano_patch8_64", num_classes=4, img_size=32, model_kwargs=kw,
                          class_names=["circle", "square", "triangle", "star"])
    path = tmp_path_factory.mktemp("det") / "det.ckpt"
    torch.save({"state_dict": task.state_dict(), "pytorch-lightning_version": pl.__version__,
                "hyper_parameters": {**task.hparams, "_class_path": "vitkit.tasks.ObjectDetector"},
                "datamodule_hyper_parameters": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}, path)
    return path


def test_explain_a_detector_maps_each_detected_query(detector_ckpt, images, tmp_path, capsys):
    from vitkit.explain.tasks import detection_inputs, detector_cross_attention

    explain("--ckpt", str(detector_ckpt), str(images / "d2.png"), "--out", str(tmp_path), "--min-score", "0",
            "--max-objects", "3")
    maps, layers = np.load(tmp_path / "d2_cross.npy"), np.load(tmp_path / "d2_cross_layers.npy")
    assert maps.shape == (3, 4, 4) and layers.shape == (3, 2, 4, 4)  # (objects, [layers,] 32/8 x 32/8 patches)
    np.testing.assert_allclose(layers[:, -1], maps)
    with open(tmp_path / "explanations_cross.csv") as f:
        row = next(csv.DictReader(f))
    assert row["detections"] == "3" and (tmp_path / row["picture"]).stat().st_size > 5000
    # the maps are the captured cross-attention of the three best-scoring queries
    task, _ = load_task(str(detector_ckpt))
    x, _ = detection_inputs([str(images / "d2.png")], 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out, every = detector_cross_attention(task.model, x)  # (B, L, Q, gh, gw)
    best = out["pred_logits"].softmax(-1)[0, :, :-1].max(-1).values.argsort(descending=True)[:3]
    np.testing.assert_allclose(maps, every[0, -1, best].numpy(), atol=1e-6)
    assert "not available for ObjectDetector" in _error(capsys, "--ckpt", str(detector_ckpt), str(images),
                                                        "--method", "grad")


# --------------------------------------------------------------------------- segmentation
def test_explain_a_segmenter_reads_rollout_from_each_predicted_class_region(images, tmp_path):
    import pytorch_lightning as pl

    from vitkit.explain import region_read_out, rollout, self_attentions
    from vitkit.explain.tasks import eval_pipeline, segmenter_region_rollout
    from vitkit.tasks import SemanticSegmenter

    torch.manual_seed(0)
    enc = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    task = SemanticSegmenter("segmenter_vit_tiny_patch8_64", num_classes=3, img_size=32, class_names=["bg", "a", "b"],
                             model_kwargs={"encoder_kwargs": enc, "head_kwargs": {"depth": 1}}).eval()
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"state_dict": task.state_dict(), "pytorch-lightning_version": pl.__version__,
                "hyper_parameters": {**task.hparams, "_class_path": "vitkit.tasks.SemanticSegmenter"}}, ckpt)
    explain("--ckpt", str(ckpt), str(images / "d0.png"), "--out", str(tmp_path / "out"))
    with open(tmp_path / "out" / "explanations_rollout.csv") as f:
        row = next(csv.DictReader(f))
    maps = np.load(tmp_path / "out" / "d0_rollout.npy")  # (classes present, 4, 4)
    classes = row["classes"].split("; ")
    assert maps.shape == (len(classes), 4, 4) and set(classes) <= {"bg", "a", "b"}
    assert (tmp_path / "out" / row["picture"]).stat().st_size > 5000
    # independently: rollout of the encoder's captured attention, rows of the first class's patches averaged
    x = eval_pipeline({}, (32, 32))[0](image=load_rgb(images / "d0.png"))["image"][None]
    with torch.no_grad():
        _, attns = self_attentions(task.model.encoder, x)
    _, _, labels = segmenter_region_rollout(task.model, x)
    first = ["bg", "a", "b"].index(classes[0])
    rows = rollout(attns)[0, 1:, 1:][labels.flatten() == first]  # the class token is the one prefix token
    np.testing.assert_allclose(maps[0], rows.mean(0).reshape(4, 4).numpy(), atol=1e-6)
    torch.testing.assert_close(region_read_out(rollout(attns), torch.ones(1, 16, dtype=torch.bool), 1),
                               rollout(attns)[:, 1:, 1:].mean(1))  # the whole image: the mean-pool read-out


# --------------------------------------------------------------------------- captioning
def test_explain_a_captioner_maps_each_generated_word(images, tmp_path):
    import pytorch_lightning as pl

    from vitkit.data.text import TextTokenizer
    from vitkit.explain.tasks import caption_cross_attention, eval_pipeline
    from vitkit.tasks.text import ImageCaptioner

    torch.manual_seed(0)
    tok = TextTokenizer.train(["a red circle", "a blue square and a green star", "two shapes: a red star"] * 5,
                              vocab_size=60)
    task = ImageCaptioner(encoder="vit_nano_patch4_32", encoder_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2},
                          img_size=16, vocab_size=tok.vocab_size, max_len=8, pad_id=tok.pad_id, bos_id=tok.bos_id,
                          eos_id=tok.eos_id,
                          decoder_kwargs={"dim": 32, "depth": 2, "num_heads": 2, "dropout": 0.0}).eval()
    ckpt = tmp_path / "cap.ckpt"
    torch.save({"state_dict": task.state_dict(), "pytorch-lightning_version": pl.__version__, "tokenizer": tok.state(),
                "hyper_parameters": {**task.hparams, "_class_path": "vitkit.tasks.text.ImageCaptioner"}}, ckpt)
    explain("--ckpt", str(ckpt), str(images / "d1.png"), "--out", str(tmp_path / "out"))
    with open(tmp_path / "out" / "explanations_cross.csv") as f:
        row = next(csv.DictReader(f))
    words = row["words"].split(" | ") if row["words"] else []
    maps, layers = np.load(tmp_path / "out" / "d1_cross.npy"), np.load(tmp_path / "out" / "d1_cross_layers.npy")
    assert len(words) >= 1 and maps.shape == (len(words), 4, 4) and layers.shape == (len(words), 2, 4, 4)
    # the teacher-forced pass that gives the maps reproduces the generated caption token for token
    task, _ = load_task(str(ckpt))
    x = eval_pipeline({}, (16, 16))[0](image=load_rgb(images / "d1.png"))["image"][None]
    ids, logits, every = caption_cross_attention(task.model, x, 7)
    logits[..., [tok.pad_id, tok.bos_id]] = float("-inf")  # never generated
    n = len(words)
    assert logits[0, :n].argmax(-1).tolist() == ids[0, :n].tolist()
    assert task.tokenizer.decode(ids[0].tolist()) == row["caption"]
    np.testing.assert_allclose(maps, every[0, -1, :n].numpy(), atol=1e-6)
