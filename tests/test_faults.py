"""Faults while training: a real SIGTERM saves a checkpoint and a resume from it (mid-epoch or at an epoch end)
ends bit-identical to an uninterrupted run; a non-finite loss stops naming the step (or is skipped and
counted); checkpoints load weights-only and refuse another task or format with one clear message."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import RandomSampler
from torch.utils.data.distributed import DistributedSampler

from vitkit.cli import main
from vitkit.data import ClassificationDataModule
from vitkit.errors import CheckpointError
from vitkit.faults import CHECKPOINT_FORMAT, NonFiniteLoss, NonFiniteLossError, _resumable_class, load_checkpoint
from vitkit.tasks import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/classification/vit_tiny_digits.yaml")
# 2 epochs of 4 batches, a tiny ViT with EMA and stochastic depth (global RNG), the config's random affine (its own RNG)
ARGS = ["--model.init_args.model_kwargs", '{"depth": 1, "embed_dim": 32, "num_heads": 2, "drop_path_rate": 0.2}',
        "--data.init_args.img_size", "16",
        "--data.init_args.batch_size", "32", "--model.init_args.ema_decay", "0.9", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2", "--test_after_fit", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1"]


def fit(root: Path, *extra: str) -> None:
    main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(root), *ARGS, *extra])


def callback(name: str, **init_args) -> list[str]:
    """A `--trainer.callbacks+` argument adding one of this module's callbacks."""
    args = ", ".join(f'"{k}": {v!r}' for k, v in init_args.items()).replace("'", '"')
    return ["--trainer.callbacks+", '{"class_path": "test_faults.%s", "init_args": {%s}}' % (name, args)]


def run_dir(root: Path) -> Path:
    return root / "vit_tiny_digits" / "version_0"


def last(root: Path) -> dict:
    return torch.load(run_dir(root) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


def val_rows(root: Path) -> dict[str, tuple[str, str]]:
    with open(run_dir(root) / "metrics.csv") as f:
        return {r["epoch"]: (r["val/acc"], r["val/loss"]) for r in csv.DictReader(f) if r.get("val/acc")}


class SigtermAt(pl.Callback):
    """Sends this very process a real SIGTERM at the end of the batch that completes global step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class WaitForSigterm(pl.Callback):
    """In a training subprocess: at global step `step`, write `marker` and wait (at most a minute) for a SIGTERM."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.02)


class PoisonAt(pl.Callback):
    """Turns the training batches of the given global steps into NaN images (a non-finite loss follows)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            batch[0].fill_(float("nan"))


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for name in ("state_dict", "ema_state_dict"):
        for k, v in a[name].items():
            assert torch.equal(v, b[name][k]), f"{name}[{k}] differs"
    for (i, sa), sb in zip(a["optimizer_states"][0]["state"].items(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"optimizer state {i} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    fit(root)
    return root


# -- pre-emption and exact resume --
def test_sigterm_mid_epoch_saves_and_resume_ends_identical(uninterrupted, tmp_path, caplog):
    with pytest.raises(SystemExit) as stopped:
        fit(tmp_path, *callback("SigtermAt", step=6))  # epoch 1, after its second batch
    assert stopped.value.code in (None, 0), "pre-emption is a clean exit"
    assert "SIGTERM received: saved" in caplog.text and "global step 6" in caplog.text
    saved = last(tmp_path)
    assert saved["global_step"] == 6 and saved["vitkit"]["task"] == "vitkit.tasks.ImageClassifier"
    fit(tmp_path, "--ckpt_path", "last")
    assert_same_training_state(last(uninterrupted), last(tmp_path))  # weights, EMA, AdamW moments, LR schedule
    assert val_rows(tmp_path)["1"] == val_rows(uninterrupted)["1"]


def test_resume_from_end_of_epoch_checkpoint_ends_identical(uninterrupted, tmp_path):
    epoch0 = next((run_dir(uninterrupted) / "checkpoints").glob("best-epoch=000-*.ckpt"))
    fit(tmp_path, "--ckpt_path", str(epoch0))
    assert_same_training_state(last(uninterrupted), last(tmp_path))


@pytest.mark.slow  # two `python train.py` start-ups; the fast tests above send the same real SIGTERM in-process
def test_sigterm_to_a_train_py_subprocess_then_resume(uninterrupted, tmp_path):
    """The whole path a cluster takes: `python train.py fit` gets SIGTERM from outside, exits 0, and
    `--ckpt_path last` in a new process reaches the uninterrupted run's final metrics."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", DIGITS,
               "--trainer.default_root_dir", str(tmp_path), *ARGS]
    marker = tmp_path / "at_step_5"
    proc = subprocess.Popen([*command, *callback("WaitForSigterm", step=5, marker=str(marker))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), f"training did not reach step 5:\n{proc.communicate()[0][-3000:]}"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received: saved" in out and last(tmp_path)["global_step"] == 5
    resumed = subprocess.run([*command, "--ckpt_path", "last"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = last(uninterrupted), last(tmp_path)
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():  # another process (thread count) may round differently
        torch.testing.assert_close(b["state_dict"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    (acc_a, loss_a), (acc_b, loss_b) = val_rows(uninterrupted)["1"], val_rows(tmp_path)["1"]
    assert acc_a == acc_b and float(loss_a) == pytest.approx(float(loss_b), abs=1e-4)


def test_seeded_shuffle_gives_one_process_the_batches_of_ddp_ranks():
    """Why one process and N DDP ranks train alike: batch k of the seeded order is the union of the ranks' batch k."""
    data = range(24)
    single = RandomSampler(data)
    single.__class__ = _resumable_class(RandomSampler)
    single.vitkit_seed = 7
    ranks = [DistributedSampler(data, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for r in ranks:
            r.set_epoch(epoch)
        order, shards = list(single), [list(r) for r in ranks]
        for k in range(4):  # global batch 6 = 2 ranks x 3
            assert set(order[6 * k: 6 * k + 6]) == set(shards[0][3 * k: 3 * k + 3]) | set(shards[1][3 * k: 3 * k + 3])
    single.vitkit_skip = 10  # a mid-epoch resume starts 10 samples in, once
    assert list(single) == order[10:] and list(single) == order


# -- non-finite loss --
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        fit(tmp_path, *callback("PoisonAt", steps=[5]))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "non-finite training loss (nan) at global step 5 (epoch 1, batch 1)" in err and "Traceback" not in err
    assert str(run_dir(tmp_path) / "checkpoints" / "last.ckpt") in err
    good = last(tmp_path)
    assert good["global_step"] == 4 and all(torch.isfinite(v).all() for v in good["state_dict"].values())


def tiny_fit(callbacks: list, max_steps: int) -> ImageClassifier:
    pl.seed_everything(0)
    clf = ImageClassifier(num_classes=10, img_size=16, model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    dm = ClassificationDataModule(img_size=16, batch_size=16)
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(clf, datamodule=dm)
    return clf


class Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(torch.cat([p.detach().flatten() for p in pl_module.model.parameters()]))


def test_skip_drops_the_update_of_a_nan_batch_and_counts_it():
    guard, shots = NonFiniteLoss(action="skip"), Snapshots()
    clf = tiny_fit([PoisonAt([2, 3]), guard, shots], max_steps=5)
    assert guard.skipped == 2
    w = shots.weights
    assert torch.equal(w[2], w[1]) and torch.equal(w[3], w[1]), "a skipped step leaves every weight as it was"
    assert not torch.equal(w[4], w[3]) and all(torch.isfinite(p).all() for p in clf.parameters())


def test_skip_stops_after_max_skips():
    with pytest.raises(NonFiniteLossError,
                       match=r"at global step 2 .*after skipping 1 such update\(s\) \(max_skips=1\)"):
        tiny_fit([PoisonAt([1, 2]), NonFiniteLoss(action="skip", max_skips=1)], max_steps=5)


# -- checkpoints are safe to load --
class Payload:
    """Unpickling this object would create a file: weights-only loading must never do it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_checkpoint_with_pickled_code_is_refused_without_running_it(uninterrupted, tmp_path, capsys):
    ckpt = torch.load(run_dir(uninterrupted) / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "code_ran"
    ckpt["extra"] = Payload(str(marker))
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit) as stopped:
        main(["test", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), *ARGS,
              "--ckpt_path", str(tmp_path / "evil.ckpt")])
    assert stopped.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert "evil.ckpt: refused by weights-only loading (it holds the Python global getattr)" in err


def test_checkpoint_of_another_task_or_format_is_a_clear_error(uninterrupted, tmp_path, capsys):
    ckpt = torch.load(run_dir(uninterrupted) / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["vitkit"]["task"] = "vitkit.tasks.segmentation.SemanticSegmenter"
    torch.save(ckpt, tmp_path / "seg.ckpt")
    with pytest.raises(SystemExit) as stopped:
        main(["validate", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), *ARGS,
              "--ckpt_path", str(tmp_path / "seg.ckpt")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert ("a checkpoint of vitkit.tasks.segmentation.SemanticSegmenter; "
            "this run's task is vitkit.tasks.ImageClassifier") in err
    ckpt["vitkit"].update(task="vitkit.tasks.classification.ImageClassifier", format=CHECKPOINT_FORMAT + 1,
                          version="9.0.0")
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError,
                       match=rf"written by vitkit 9.0.0 in checkpoint format {CHECKPOINT_FORMAT + 1}; this is vitkit"):
        load_checkpoint(tmp_path / "future.ckpt", task=ImageClassifier)


def test_a_checkpoint_stamped_before_a_task_moved_still_loads(uninterrupted, tmp_path):
    """Stamps name the public `vitkit.tasks.<Class>`; a stamp with the defining module of an earlier layout
    (`vitkit.tasks.classification.ImageClassifier`, `vitkit.tasks.detection.ObjectDetector`) names the same task."""
    ckpt = torch.load(run_dir(uninterrupted) / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["vitkit"]["task"] = "vitkit.tasks.classification.ImageClassifier"
    torch.save(ckpt, tmp_path / "before.ckpt")
    assert load_checkpoint(tmp_path / "before.ckpt", task=ImageClassifier)["global_step"] == 8
    from vitkit.faults import same_task
    from vitkit.tasks import ObjectDetector

    assert same_task("vitkit.tasks.detection.ObjectDetector", "vitkit.tasks.ObjectDetector")
    assert ObjectDetector.__module__ == "vitkit.tasks.detection.task"  # moved by the split, still the same task
    assert not same_task("vitkit.tasks.detection.ObjectDetector", "vitkit.tasks.ImageClassifier")


def test_unstamped_lightning_checkpoint_still_loads(uninterrupted, tmp_path):
    ckpt = torch.load(run_dir(uninterrupted) / "checkpoints" / "last.ckpt", weights_only=True)
    del ckpt["vitkit"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert load_checkpoint(tmp_path / "old.ckpt", task=ImageClassifier)["global_step"] == 8
    with pytest.raises(CheckpointError, match=r"not a Lightning checkpoint \(no 'state_dict'"):
        torch.save(ckpt["state_dict"], tmp_path / "weights.pth")
        load_checkpoint(tmp_path / "weights.pth")
