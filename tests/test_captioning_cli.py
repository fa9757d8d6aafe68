"""The captioning and VQA configs from the command line on a small shapes set in COCO-captions / VQA JSON:
short fits whose loss falls, test metrics and pictures, predict on a folder / a question file, and errors."""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from vitkit.cli import main
from vitkit.data.shapes import ShapesConfig, generate_shapes
from vitkit.tasks.text import answer_type

ROOT = Path(__file__).resolve().parents[1]
ENCODER = ["--model.init_args.encoder_kwargs", '{"depth": 1, "patch_size": 8, "embed_dim": 32, "num_heads": 2}',
           "--data.init_args.img_size", "32", "--data.init_args.batch_size", "8",
           "--trainer.enable_progress_bar", "false"]
SMALL = '{"dim": 32, "depth": 1, "num_heads": 2, "dropout": 0.0}'


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(num_train=24, num_val=8, num_test=8))


def data_args(root: Path, prefix: str) -> list[str]:
    out = []
    for s in ("train", "val", "test"):
        out += [f"--data.init_args.{s}_json", str(root / "annotations" / f"{prefix}_{s}.json"),
                f"--data.init_args.{s}_images", str(root / s / "images")]
    return out


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def caption(sub: str, tmp: Path, shapes: Path, *extra: str) -> None:
    main([sub, "--config", str(ROOT / "configs/captioning/shapes_captions.yaml"),
          "--trainer.default_root_dir", str(tmp),
          *data_args(shapes, "captions"), *ENCODER, "--model.init_args.decoder_kwargs", SMALL, *extra])


def vqa(sub: str, tmp: Path, shapes: Path, *extra: str) -> None:
    main([sub, "--config", str(ROOT / "configs/vqa/shapes_vqa.yaml"), "--trainer.default_root_dir", str(tmp),
          *data_args(shapes, "vqa"), *ENCODER, "--model.init_args.fusion_kwargs", SMALL,
          "--model.init_args.pretrained", "null", *extra])


FIT = ["--trainer.max_steps", "40", "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "2",
       "--trainer.limit_val_batches", "1", "--test_after_fit", "false", "--model.init_args.lr", "3e-3",
       "--model.init_args.warmup_steps", "5"]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, shapes) -> Path:
    tmp = tmp_path_factory.mktemp("cap")
    caption("fit", tmp, shapes, *FIT, "--model.init_args.max_new_tokens", "12")
    return tmp / "shapes_captions" / "version_0"


@pytest.fixture(scope="module")
def answerer(tmp_path_factory, shapes) -> Path:
    tmp = tmp_path_factory.mktemp("vqa")
    vqa("fit", tmp, shapes, *FIT, "--trainer.max_steps", "60", "--data.init_args.batch_size", "24")
    return tmp / "shapes_vqa" / "version_0"


def test_captioner_fit_loss_falls_and_keeps_its_tokenizer(captioner):
    curve = losses(captioner)
    assert len(curve) >= 10 and sum(curve[-3:]) / 3 < 0.6 * sum(curve[:3]) / 3
    ckpt = torch.load(captioner / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert "tokenizer" in ckpt and (captioner / "tokenizer.json").exists()


def test_captioner_test_logs_bleu4_and_cider_and_draws_the_captions(captioner, shapes, tmp_path):
    caption("test", tmp_path, shapes, "--ckpt_path", str(captioner / "checkpoints" / "last.ckpt"),
            "--model.init_args.max_new_tokens", "12")
    out = tmp_path / "shapes_captions" / "version_0"
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.0 <= float(row["test/bleu4"]) <= 1.0 and float(row["test/cider"]) >= 0.0
    results = json.loads((out / "test_captions.json").read_text())
    assert len(results) == 8 and {"image_id", "caption"} == set(results[0])
    assert (out / "test_captions.png").stat().st_size > 10_000 and (out / "test_gallery.png").exists()


def test_captioner_predicts_a_folder_of_images(captioner, shapes, tmp_path):
    folder = tmp_path / "pictures"
    shutil.copytree(shapes / "test" / "images", folder)
    caption("predict", tmp_path, shapes, "--ckpt_path", str(captioner / "checkpoints" / "last.ckpt"),
            "--data.init_args.predict_dir", str(folder), "--model.init_args.max_new_tokens", "12")
    out = tmp_path / "shapes_captions" / "version_0"
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in folder.iterdir())
    assert all(r["caption"] for r in rows) and (out / "captions.png").exists()


def test_vqa_fit_loss_falls_and_test_logs_vqa_accuracy(answerer, shapes, tmp_path):
    curve = losses(answerer)
    assert len(curve) >= 10 and sum(curve[-5:]) / 5 < 0.85 * sum(curve[:5]) / 5
    vqa("test", tmp_path, shapes, "--ckpt_path", str(answerer / "checkpoints" / "last.ckpt"))
    with open(tmp_path / "shapes_vqa" / "version_0" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.0 <= float(row["test/vqa_acc"]) <= 1.0
    # per answer type (VQA's yes/no, number, other): every type of the test questions, weighted back to the total
    counts = Counter(answer_type([q["answer"]]) for q in json.loads((shapes / "annotations/vqa_test.json").read_text()))
    assert set(counts) == {"yes_no", "number", "other"}
    by_type = {t: float(row[f"test/vqa_acc_{t}"]) for t in counts}
    weighted = sum(counts[t] * by_type[t] for t in counts) / sum(counts.values())
    assert weighted == pytest.approx(float(row["test/vqa_acc"]), abs=1e-5)


def test_vqa_answers_a_question_file(answerer, shapes, tmp_path):
    questions = [{"image": str(shapes / "test/images/00000.png"), "question": "how many shapes are there?"},
                 {"image": str(shapes / "test/images/00001.png"), "question": "is there a red circle?"}]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    vqa("predict", tmp_path, shapes, "--ckpt_path", str(answerer / "checkpoints" / "last.ckpt"),
        "--data.init_args.predict_file", str(tmp_path / "q.json"))
    rows = json.loads((tmp_path / "shapes_vqa" / "version_0" / "predictions.json").read_text())
    hp = torch.load(answerer / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["hyper_parameters"]
    assert [r["question"] for r in rows] == [q["question"] for q in questions]
    assert all(r["answer"] in hp["class_names"] and 0 < r["prob"] <= 1 for r in rows)


def test_vqa_question_file_naming_a_missing_image_is_a_clear_error(answerer, shapes, tmp_path, capsys):
    (tmp_path / "q.json").write_text(json.dumps([{"image": "nowhere.png", "question": "what?"}]))
    with pytest.raises(SystemExit) as exit_info:
        vqa("predict", tmp_path, shapes, "--ckpt_path", str(answerer / "checkpoints" / "last.ckpt"),
            "--data.init_args.predict_file", str(tmp_path / "q.json"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "q.json: 1 image file(s) it names do not exist" in err and "nowhere.png" in err


def test_a_vqa_model_can_start_from_the_captioners_encoder(captioner):
    from vitkit.models import VQATransformer

    ckpt = captioner / "checkpoints" / "last.ckpt"
    encoder_kwargs = {"depth": 1, "patch_size": 8, "embed_dim": 32, "num_heads": 2}
    vqa = VQATransformer(vocab_size=50, num_answers=5, encoder="vit_nano_patch4_32", img_size=32, dim=32, depth=1,
                         num_heads=2, encoder_kwargs=encoder_kwargs, pretrained=str(ckpt))
    state = torch.load(ckpt, weights_only=False, map_location="cpu")["state_dict"]
    for name, value in vqa.encoder.state_dict().items():
        torch.testing.assert_close(value, state[f"model.encoder.{name}"])


def test_freeze_encoder_keeps_the_captioners_encoder_out_of_training(captioner):
    from vitkit.tasks import VisualQA
    from vitkit.tasks.optim import build_adamw

    task = VisualQA(encoder="vit_nano_patch4_32", img_size=32, vocab_size=50, num_classes=5, freeze_encoder=True,
                    encoder_kwargs={"depth": 1, "patch_size": 8, "embed_dim": 32, "num_heads": 2},
                    pretrained=str(captioner / "checkpoints" / "last.ckpt"),
                    fusion_kwargs={"dim": 32, "depth": 1, "num_heads": 2})
    trained = {id(p) for g in build_adamw(task.model, 1e-3, 0.05).param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in task.model.encoder.parameters())
    assert all(id(p) in trained for n, p in task.model.named_parameters() if not n.startswith("encoder."))


def test_a_frozen_stem_encoder_keeps_its_batchnorm_statistics_in_training():
    from vitkit.tasks import VisualQA

    task = VisualQA(encoder="vit_nano_patch4_32", img_size=32, vocab_size=50, num_classes=5, freeze_encoder=True,
                    encoder_kwargs={"depth": 1, "patch_size": 8, "embed_dim": 32, "num_heads": 2,
                                    "stem_channels": [8, 16]},
                    fusion_kwargs={"dim": 32, "depth": 1, "num_heads": 2})
    before = {k: v.clone() for k, v in task.model.encoder.state_dict().items()}
    task.train()  # what the Trainer does before every training epoch
    assert task.model.training and not task.model.encoder.training
    loss = task(torch.randn(4, 3, 32, 32) * 3 + 1, torch.randint(3, 50, (4, 6))).sum()
    loss.backward()
    for name, value in task.model.encoder.state_dict().items():
        assert torch.equal(value, before[name]), name  # running means/variances included
