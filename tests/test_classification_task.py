"""ImageClassifier: optimiser groups, schedule, prediction output, reports, and a short real training run."""
from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch

from vitkit.data import ClassificationDataModule
from vitkit.tasks import ImageClassifier
from vitkit.tasks.optim import build_adamw, warmup_cosine
from vitkit.tasks.reports import per_class_accuracy, save_confusion_matrix

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_classifier(**kw) -> ImageClassifier:
    return ImageClassifier(model="vit_tiny_patch4_32", num_classes=10, img_size=16, model_kwargs=TINY, **kw)


def test_weight_decay_skips_norms_biases_and_tokens():
    clf = tiny_classifier()
    opt = build_adamw(clf.model, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in clf.model.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.bias", "blocks.1.attn.qkv.bias",
            "head.bias"} <= no_decay
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "head.weight"} <= decay
    assert not any(n.endswith(".bias") or "norm" in n for n in decay)
    assert len(no_decay) + len(decay) == len(names)


def test_layer_decay_scales_learning_rates_by_depth():
    clf = tiny_classifier()
    opt = build_adamw(clf.model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in opt.param_groups for n, p in clf.model.named_parameters()
             if any(p is q for q in g["params"])}
    # layers: stem 0, blocks 1..2, head 3 -> lr * 0.5 ** (3 - layer)
    assert lr_of["head.weight"] == pytest.approx(1e-3)
    assert lr_of["blocks.1.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5)
    assert lr_of["blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * 0.25)
    assert lr_of["pos_embed"] == pytest.approx(1e-3 * 0.125)


def test_warmup_then_cosine_schedule():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=100, min_lr_ratio=0.01) for s in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values[:10], values[1:10]))
    assert all(b <= a + 1e-12 for a, b in zip(values[10:], values[11:]))
    assert values[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[100] == pytest.approx(0.01)


@pytest.mark.parametrize("length", [{"max_epochs": 3}, {"max_steps": 12}, {"max_steps": 12, "max_epochs": 5}])
def test_warmup_epochs_are_epochs_whether_the_run_is_given_in_epochs_or_steps(length, tmp_path):
    """warmup_epochs=1 over 40 images in batches of 8 warms up for 5 optimiser steps (peak lr at step 4), also
    when the run's length is given as max_steps alone (before, that warmed up over the whole run)."""
    from torch.utils.data import DataLoader, TensorDataset

    lrs = []

    class LearningRates(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    data = DataLoader(TensorDataset(torch.randn(40, 3, 16, 16), torch.randint(0, 10, (40,))), batch_size=8)
    trainer = pl.Trainer(**length, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[LearningRates()], default_root_dir=tmp_path)
    trainer.fit(tiny_classifier(lr=1e-3, warmup_epochs=1.0, layer_decay=None), train_dataloaders=data)
    assert max(range(len(lrs)), key=lrs.__getitem__) == 4
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[4] == pytest.approx(1e-3)


def test_predict_step_returns_sorted_topk_with_class_names():
    names = [f"class_{i}" for i in range(10)]
    clf = tiny_classifier(class_names=names, top_k=3).eval()
    x = torch.randn(4, 3, 16, 16)
    rows = clf.predict_step((x, ["a.png", "b.png", "c.png", "d.png"]), 0)
    probs = clf(x).softmax(-1)
    assert [r["path"] for r in rows] == ["a.png", "b.png", "c.png", "d.png"]
    for r, p in zip(rows, probs):
        assert len(r["labels"]) == 3 and r["probs"] == sorted(r["probs"], reverse=True)
        assert r["labels"][0] == names[int(p.argmax())]
        assert r["probs"][0] == pytest.approx(float(p.max().detach()), abs=1e-5)


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="class_names has 3 names; expected num_classes=10"):
        tiny_classifier(class_names=["a", "b", "c"])


def test_per_class_accuracy_and_confusion_png(tmp_path):
    matrix = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    acc = per_class_accuracy(matrix)
    assert acc[0] == pytest.approx(0.8) and acc[1] == pytest.approx(0.9) and torch.isnan(acc[2])
    path = save_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_short_training_on_digits_lowers_loss_and_writes_test_report(tmp_path):
    """CI's short version of the digits benchmark: a few dozen real steps must reduce the loss."""
    pl.seed_everything(0)
    dm = ClassificationDataModule(dataset="digits", img_size=16, batch_size=32)
    clf = ImageClassifier(model="vit_tiny_patch4_32", num_classes=dm.num_classes, img_size=16,
                          class_names=dm.class_names,
                          model_kwargs={"depth": 2, "embed_dim": 96, "num_heads": 3, "global_pool": "avg",
                                        "class_token": False},
                          lr=2e-3, warmup_epochs=0.3)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_epochs=3, default_root_dir=tmp_path, logger=pl.loggers.CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Record()])
    trainer.fit(clf, datamodule=dm)
    assert len(losses) >= 100
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    result = trainer.test(clf, datamodule=dm, verbose=False)[0]
    assert result["test/acc"] > 0.4  # 10 classes: chance is 0.1
    out = tmp_path / "lightning_logs" / "version_0"
    with open(out / "per_class_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == [str(i) for i in range(10)]
    correct, total = sum(int(r["correct"]) for r in rows), sum(int(r["support"]) for r in rows)
    assert total == len(dm.get_dataset("test"))
    assert correct / total == pytest.approx(result["test/acc"], abs=1e-6)
    assert (out / "confusion_matrix.png").stat().st_size > 2000


def test_pretrained_timm_checkpoint_starts_the_classifier(tmp_path):
    """`model.init_args.pretrained` in YAML: encoder weights come from the file, a 1000-class head is replaced."""
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, patch_size=4, img_size=16,
                               depth=2, embed_dim=64, num_heads=2)
    torch.save(source.state_dict(), tmp_path / "timm_vit.pth")
    clf = tiny_classifier(pretrained=str(tmp_path / "timm_vit.pth"))
    assert torch.equal(clf.model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert torch.equal(clf.model.pos_embed, source.pos_embed)
    assert clf.model.head.weight.shape == (10, 64)
