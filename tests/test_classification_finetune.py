"""ImageClassifier fine-tuning options: freezing, Mixup/CutMix, weight EMA, gradient checkpointing, torch.compile."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from vitkit.data import ClassificationDataModule
from vitkit.errors import ConfigError
from vitkit.tasks import ImageClassifier
from vitkit.tasks.finetune import BatchMixer
from vitkit.tasks.optim import build_adamw

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_classifier(**kw) -> ImageClassifier:
    return ImageClassifier(model="vit_tiny_patch4_32", num_classes=10, img_size=16, model_kwargs=TINY,
                           warmup_epochs=0.0, **kw)


def digits(batch_size: int = 32) -> ClassificationDataModule:
    return ClassificationDataModule(dataset="digits", img_size=16, batch_size=batch_size)


def fit(clf: ImageClassifier, tmp_path, steps: int | float, callbacks=(), max_epochs: int = 1) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, limit_train_batches=steps, limit_val_batches=0,
                         default_root_dir=tmp_path, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=list(callbacks))
    trainer.fit(clf, datamodule=digits())
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# -- freezing --
@pytest.mark.parametrize(
    "freeze, frozen_prefixes",
    [("encoder", ("patch_embed", "pos_embed", "cls_token", "blocks", "norm.")),
     (1, ("patch_embed", "pos_embed", "cls_token", "blocks.0."))],
)
def test_frozen_weights_stay_and_only_trainable_ones_are_optimised(tmp_path, freeze, frozen_prefixes):
    clf = tiny_classifier(freeze=freeze, lr=1e-2)
    before = snapshot(clf.model)
    trainer = fit(clf, tmp_path, steps=3)
    after = snapshot(clf.model)
    frozen = {n for n in before if n.startswith(frozen_prefixes)}
    assert frozen and set(clf.frozen) == frozen
    for n in before:
        assert torch.equal(before[n], after[n]) == (n in frozen), n
        assert clf.model.get_parameter(n).requires_grad == (n not in frozen), n
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for n, p in clf.model.named_parameters() if n not in frozen}


def test_layer_decay_with_frozen_blocks_keeps_depth_scales():
    clf = tiny_classifier(freeze=1)
    opt = build_adamw(clf.model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in opt.param_groups for n, p in clf.model.named_parameters()
             if any(p is q for q in g["params"])}
    # layers: stem 0, blocks 1..2, head 3; frozen stem and blocks.0 are absent, the rest keep lr * 0.5 ** (3 - layer)
    assert set(lr_of) == {n for n, p in clf.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("blocks.0.", "patch_embed", "pos_embed", "cls_token")) for n in lr_of)
    assert lr_of["head.weight"] == pytest.approx(1e-3)
    assert lr_of["blocks.1.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5)
    assert all(g["params"] for g in opt.param_groups)


@pytest.mark.parametrize("freeze", [3, -1, "head"])
def test_freeze_rejects_bad_values(freeze):
    with pytest.raises(ConfigError, match="model.freeze"):
        tiny_classifier(freeze=freeze)


# -- Mixup / CutMix --
def test_mixup_loss_is_soft_target_cross_entropy():
    clf = tiny_classifier(mixup=0.8, cutmix=1.0).eval()
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    np.random.seed(0)
    with torch.no_grad():
        loss = clf.training_loss(x.clone(), y)
    np.random.seed(0)  # timm Mixup draws lambda and the mixup/cutmix switch from numpy
    xm, target = BatchMixer(0.8, 1.0, 1.0, 0.1, 10)(x.clone(), y)
    assert target.shape == (8, 10) and torch.allclose(target.sum(-1), torch.ones(8))
    assert (target > 0.1).sum(-1).ge(2).any()  # mixed: two labels carry weight
    with torch.no_grad():
        expected = -(target * clf(xm).log_softmax(-1)).sum(-1).mean()
        hard = F.cross_entropy(clf(x), y, label_smoothing=0.1)
    assert torch.isfinite(loss) and loss == pytest.approx(float(expected), abs=1e-5)
    assert abs(float(loss) - float(hard)) > 1e-3


def test_odd_batch_is_not_mixed_and_keeps_label_smoothing():
    clf = tiny_classifier(mixup=0.8).eval()
    x, y = torch.randn(7, 3, 16, 16), torch.arange(7)
    with torch.no_grad():
        loss = clf.training_loss(x.clone(), y)
        assert loss == pytest.approx(float(F.cross_entropy(clf(x), y, label_smoothing=0.1)), abs=1e-5)


def test_mixup_training_lowers_loss_on_digits(tmp_path):
    pl.seed_everything(0)
    clf = ImageClassifier(model="vit_tiny_patch4_32", num_classes=10, img_size=16, lr=2e-3, warmup_epochs=0.3,
                          mixup=0.2, cutmix=0.5,
                          model_kwargs={"depth": 2, "embed_dim": 96, "num_heads": 3, "global_pool": "avg",
                                        "class_token": False})
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    fit(clf, tmp_path, steps=1.0, callbacks=[Record()], max_epochs=5)
    assert len(losses) >= 150 and all(np.isfinite(losses))
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10  # soft targets keep the mixed loss well above 0


# -- weight EMA --
class RecordWeights(pl.Callback):
    def __init__(self) -> None:
        self.weights = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.weights.append(snapshot(module.model))


def test_ema_is_the_decayed_average_and_validation_uses_it(tmp_path):
    clf = tiny_classifier(ema_decay=0.5, lr=1e-2)
    w0, record = snapshot(clf.model), RecordWeights()
    fit(clf, tmp_path, steps=3, callbacks=[record])
    expected = w0
    for w in record.weights:  # ema <- 0.5 * ema + 0.5 * live, after each optimiser step
        expected = {n: 0.5 * expected[n] + 0.5 * w[n] for n in w}
    ema, live = snapshot(clf.ema.module), snapshot(clf.model)
    for n in ema:
        torch.testing.assert_close(ema[n], expected[n], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ema["head.weight"], live["head.weight"])
    assert set(clf.state_dict()) == ({f"model.{n}" for n in clf.model.state_dict()}
                                     | {k for k in clf.state_dict() if "metrics" in k or "confusion" in k})
    # validation: the logged val/loss is the EMA model's loss, not the live model's
    dm = digits()
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.validate(clf, datamodule=dm, verbose=False)[0]
    dm.setup("validate")
    with torch.no_grad():
        batches = list(dm.val_dataloader())

        def loss_of(net):
            return (sum(float(F.cross_entropy(net(x), y, reduction="sum")) for x, y in batches)
                    / sum(len(y) for _, y in batches))

        assert result["val/loss"] == pytest.approx(loss_of(clf.ema.module), rel=1e-4)
        assert abs(result["val/loss"] - loss_of(clf.model.eval())) > 1e-4


def test_ema_checkpoint_round_trip(tmp_path):
    clf = tiny_classifier(ema_decay=0.9, lr=1e-2)
    trainer = fit(clf, tmp_path, steps=2)
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "ema.ckpt")
    for n, p in clf.ema.module.state_dict().items():
        assert torch.equal(loaded.ema.module.state_dict()[n], p), n
        assert torch.equal(loaded.model.state_dict()[n], clf.model.state_dict()[n]), n
    assert not torch.equal(loaded.ema.module.head.weight, loaded.model.head.weight)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), clf.ema.module(x))
    # a checkpoint without an EMA starts one from its live weights
    plain = ImageClassifier.load_from_checkpoint(tmp_path / "ema.ckpt", ema_decay=None)
    trainer.save_checkpoint(tmp_path / "ema2.ckpt")
    ckpt = torch.load(tmp_path / "ema2.ckpt", weights_only=False)
    del ckpt["ema_state_dict"]
    torch.save(ckpt, tmp_path / "plain.ckpt")
    started = ImageClassifier.load_from_checkpoint(tmp_path / "plain.ckpt")
    assert plain.ema is None and torch.equal(started.ema.module.head.weight, clf.model.head.weight)


# -- gradient checkpointing and compile --
def test_grad_checkpointing_gives_the_same_loss_and_grads(monkeypatch):
    plain, ckpt = tiny_classifier(), tiny_classifier(grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    losses = [clf.training_loss(x, y) for clf in (plain, ckpt)]
    for loss in losses:
        loss.backward()
    assert len(calls) == 2  # one per block, only in the checkpointed model
    torch.testing.assert_close(losses[0], losses[1])
    for (n, p), q in zip(plain.model.named_parameters(), ckpt.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_compiled_and_eager_checkpoints_load_into_each_other(tmp_path):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 16, 16)
    compiled = tiny_classifier(compile=True, compile_backend="aot_eager")
    fit(compiled, tmp_path, steps=2).save_checkpoint(tmp_path / "compiled.ckpt")
    assert compiled.model._compiled_call_impl is not None
    assert not any("_orig_mod" in k for k in torch.load(tmp_path / "compiled.ckpt", weights_only=False)["state_dict"])
    eager = ImageClassifier.load_from_checkpoint(tmp_path / "compiled.ckpt", compile=False)
    assert eager.model._compiled_call_impl is None
    with torch.no_grad():
        torch.testing.assert_close(eager.eval()(x), compiled.eval()(x), atol=1e-5, rtol=1e-5)
    fit(eager, tmp_path, steps=1).save_checkpoint(tmp_path / "eager.ckpt")
    again = ImageClassifier.load_from_checkpoint(tmp_path / "eager.ckpt", compile=True, compile_backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), eager.eval()(x), atol=1e-5, rtol=1e-5)
