"""Guards that stop or save a run: pre-emption (SIGTERM) and non-finite loss, plus the shared logging helpers."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..errors import VitkitError

log = logging.getLogger("vitkit")


class NonFiniteLossError(VitkitError, FloatingPointError):
    """The training loss became NaN or infinite."""


@rank_zero_only
def _say(message: str) -> None:
    log.warning(message)


def _any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (a collective: call it on all ranks at the same point)."""
    return trainer.strategy.reduce_boolean_decision(flag, all=False) if trainer.world_size > 1 else flag


# ----------------------------------------------------------------------------------------------- pre-emption
class Preemption(Callback):
    """On SIGTERM (what SLURM, Kubernetes and cloud spot instances send before killing a job), save a checkpoint
    as `last.ckpt` in the run's checkpoint folder after the current training batch and exit with status 0.
    `python train.py fit ... --ckpt_path last` continues from it, mid-epoch included (see ResumeState).

    Lightning's own handler records the signal; here the ranks agree on it after each batch (one collective
    when there are several), so they all save the same step and leave together.
    """

    def __init__(self) -> None:
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if _any_rank(trainer, trainer.received_sigterm):
            self._save(trainer, f"after batch {batch_idx} of epoch {trainer.current_epoch}")
            raise SIGTERMException  # Lightning's clean exit: loggers finalised, status 0

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A SIGTERM that Lightning acted on outside a training batch (during validation): save there, on one
        process."""
        if (
            isinstance(exception, SIGTERMException)
            and self.saved_step != trainer.global_step
            and trainer.world_size == 1
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and trainer.global_step > 0
        ):
            self._save(trainer, f"during epoch {trainer.current_epoch}")

    def _save(self, trainer: pl.Trainer, where: str) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state
        self.saved_step = trainer.global_step
        _say(
            f"SIGTERM received: saved {path} at global step {trainer.global_step} ({where}) and stopping. "
            "Resume with the same command plus `--ckpt_path last`."
        )


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """`last.ckpt` in the folder of the run's ModelCheckpoint, else `<log_dir>/checkpoints/last.ckpt`."""
    name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / name
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / name


# ------------------------------------------------------------------------------------------ non-finite loss
class NonFiniteLoss(Callback):
    """Watch the training loss before each backward pass.

    Args:
        action: "stop" raises NonFiniteLossError naming the step, before that step changes any weight, so the
            checkpoints already written stay the last good ones. "skip" drops the optimiser update of that step
            (its gradients are cleared; the step and learning-rate schedule still advance, as with AMP's
            GradScaler), counts it in `skipped`, logs `train/skipped_batches` and reports the total at the end.
        max_skips: with "skip", stop as "stop" does once more than this many steps were skipped (None: never).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int | None = 10) -> None:
        if action not in ("stop", "skip"):
            raise VitkitError(f"NonFiniteLoss.action: found {action!r}; expected 'stop' or 'skip'")
        self.action, self.max_skips = action, max_skips
        self.skipped = 0
        self._drop_update = False
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach()
        if not _any_rank(trainer, not bool(torch.isfinite(value).all())):
            return
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        found = "nan" if torch.isnan(value).any() else "inf"
        over = self.max_skips is not None and self.skipped >= self.max_skips
        if self.action == "stop" or over:
            raise NonFiniteLossError(self._message(trainer, found, where, over))
        if not self._drop_update:
            _say(f"non-finite training loss ({found}) at {where}: skipping this update (NonFiniteLoss action=skip)")
        self._drop_update = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self._drop_update:
            return
        optimizer.zero_grad(set_to_none=True)  # parameters without gradients are left alone by the step
        self._drop_update = False
        self.skipped += 1
        pl_module.log("train/skipped_batches", float(self.skipped), reduce_fx="max")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skipped:
            _say(f"skipped {self.skipped} update(s) with a non-finite training loss (NonFiniteLoss action=skip)")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def _message(self, trainer: pl.Trainer, found: str, where: str, over: bool) -> str:
        callback = trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        why = f" after skipping {self.skipped} such update(s) (max_skips={self.max_skips})" if over else ""
        return (
            f"non-finite training loss ({found}) at {where}{why}; stopped before this step changed the weights, "
            f"and {kept}. Lower model.init_args.lr, set trainer.gradient_clip_val, or skip such batches with "
            "{class_path: vitkit.faults.NonFiniteLoss, init_args: {action: skip}} in trainer.callbacks, then resume "
            "with --ckpt_path last"
        )
