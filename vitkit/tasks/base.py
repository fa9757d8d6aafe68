"""What every vitkit task does the same way, written once: the step loop over `loss(batch)` and
`_evaluate(batch, stage)`, AdamW with warm-up and a cosine over shared hyper-parameters, the collected
predictions, the run folder and per-process output files, the checkpoint monitor, the settings kept out of
checkpoints, and `torch.compile` in place.

A task is a subclass that builds `self.model` and writes `loss`, `_evaluate`, `predict_step` and whatever
pictures it draws; the CLI, `vitkit explain`, `vitkit check-data` and the test gallery reach it only through
the hooks below (`monitor`, `explainers`, `gallery_items`, `write_predictions`).
"""
from __future__ import annotations

import csv
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from ..errors import ConfigError
from .optim import adamw, param_groups, schedule_steps, warmup_cosine

log = logging.getLogger("vitkit")

GalleryItem = tuple[float, torch.Tensor, str]  # (score: higher is better, image (3, H, W), caption)


class VitkitTask(pl.LightningModule):
    """A LightningModule with vitkit's shared plumbing; a task adds only its model, loss, metrics and pictures.

    Class attributes a task sets:
        monitor: the logged metric that picks the best checkpoint (the CLI's ModelCheckpoint reads it; a task
            may also set it per instance, e.g. from a `monitor_metric` argument).
        monitor_mode: "max" or "min" for `monitor`.
        runtime_hparams: constructor arguments kept out of the checkpoint's hyper-parameters, so that `test` /
            `predict --ckpt_path` take them from their own command line (decoding, thresholds, drawings).
        batch_key: for dict batches, the entry whose length is the batch size logged with each value.

    Hyper-parameters the shared optimiser reads (each task's constructor declares the ones it offers):
        lr, weight_decay, betas (AdamW), layer_decay (BEiT's layer-wise lr decay; None: off), warmup_epochs
        (fractions allowed) or warmup_steps (when set it wins), min_lr_ratio (the cosine's floor).
    """

    monitor: ClassVar[str] = "val/loss"
    monitor_mode: ClassVar[Literal["min", "max"]] = "min"
    runtime_hparams: ClassVar[tuple[str, ...]] = ()
    batch_key: ClassVar[str | None] = None
    model: nn.Module

    # -- steps: a task writes `loss(batch)` and `_evaluate(batch, stage)` --
    def loss(self, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The training loss of a batch: a scalar, or a dict with the total under "loss" and its parts (each
        logged as `train/loss_<part>`)."""
        raise NotImplementedError(f"{type(self).__name__} has no loss(batch)")

    def _evaluate(self, batch: Any, stage: Literal["val", "test"]) -> Any:
        """Log and accumulate the `stage` metrics of a batch; what it returns goes to callbacks (the gallery)."""
        raise NotImplementedError(f"{type(self).__name__} has no _evaluate(batch, stage)")

    def batch_size(self, batch: Any) -> int | None:
        """The batch size logged with each value (None: Lightning infers it)."""
        return len(batch[self.batch_key]) if self.batch_key is not None else None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = self.loss(batch)
        parts = losses if isinstance(losses, dict) else {"loss": losses}
        n = self.batch_size(batch)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        if len(parts) > 1:
            self.log_dict({f"train/loss_{k}": v for k, v in parts.items() if k != "loss"}, batch_size=n)
        return parts["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        return self._evaluate(batch, "test")

    # -- prediction: `predict_step` returns one JSON-able row per input; the base collects and writes them --
    def on_predict_epoch_start(self) -> None:
        self._predictions: list[dict] = []

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs:
            self._predictions.extend(outputs)

    def on_predict_epoch_end(self) -> None:
        self.write_predictions(self._predictions)

    def write_predictions(self, rows: list[dict]) -> Path:
        """`predictions.json` (one object per input, in this process's share) and, when `prediction_table`
        gives rows, `predictions.csv`; returns the JSON file."""
        path = self.output_path("predictions.json")
        path.write_text(json.dumps(rows, indent=1))
        table = self.prediction_table(rows)
        if table:
            with open(path.with_suffix(".csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        log.info("%d predictions written to %s%s", len(rows), path, " and .csv" if table else "")
        return path

    def prediction_table(self, rows: list[dict]) -> list[dict] | None:
        """The CSV rows of `predictions.csv`: the rows themselves when every value is a plain scalar, else none
        (a task with nested rows flattens them here)."""
        flat = rows and all(not isinstance(v, (list, dict)) for r in rows for v in r.values())
        return rows if flat else None

    def gallery_items(self, batch: Any, outputs: Any) -> list[GalleryItem] | None:
        """The test gallery's (score, image, caption) per test image of a batch, from `test_step`'s `outputs`;
        None: this task shows no gallery."""
        return None

    # -- optimisation: AdamW over `param_groups()`, linear warm-up, then `lr_lambda` (a cosine) per step --
    def param_groups(self) -> list[dict]:
        """timm's groups of `self.model` (no weight decay on norms, biases, tokens, positions; `layer_decay`
        scales each block's lr), each with its own "lr"."""
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay, hp.get("layer_decay"))
        for g in groups:
            g["lr"] = hp.lr * g.get("lr_scale", 1.0)
        return groups

    def build_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return adamw(self.model, groups, self.hparams.lr, self.hparams.get("betas", (0.9, 0.999)))

    def schedule_steps(self) -> tuple[int, int]:
        """(warm-up steps, total optimiser steps): `warmup_steps` when set, else `warmup_epochs` of steps."""
        hp = self.hparams
        if hp.get("warmup_steps") is not None:
            total = int(self.trainer.estimated_stepping_batches)
            return min(total, hp.warmup_steps), total
        return schedule_steps(self.trainer, hp.get("warmup_epochs") or 0.0)

    def lr_lambda(self, warmup: int, total: int) -> Callable[[int], float]:
        """Multiplier of each group's lr at an optimiser step: linear warm-up, then a cosine to `min_lr_ratio`."""
        return functools.partial(warmup_cosine, warmup_steps=warmup, total_steps=total,
                                 min_lr_ratio=self.hparams.get("min_lr_ratio", 0.0))

    def configure_optimizers(self) -> dict:
        optimizer = self.build_optimizer(self.param_groups())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda(*self.schedule_steps()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- hooks other layers call, run folders, building and compiling --

    def explainers(self) -> dict[str, Callable[..., list[dict]]]:
        """What `vitkit explain` can do with this task: method name -> `run(task, checkpoint, inputs, args, out)`
        returning one index row per image; the first method is the default. None by default."""
        return {}

    def run_dir(self) -> Path:
        """The run folder (`runs/<config>/version_N`), created if needed; the same on every process."""
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def output_path(self, name: str) -> Path:
        """`<run>/<name>`, with `.rank<N>` before the extension when several processes each write their share
        (`predictions.json` -> `predictions.rank1.json`; a name without extension gets it at the end)."""
        if self.trainer.world_size > 1:
            stem, dot, ext = name.partition(".")
            name = f"{stem}.rank{self.global_rank}{dot}{ext}"
        return self.run_dir() / name

    @staticmethod
    def build_model(build: Callable[..., nn.Module], what: str, *args: Any, field: str = "model.init_args",
                    **kwargs: Any) -> nn.Module:
        """`build(*args, **kwargs)`, a model's own ValueError/TypeError (an unknown keyword, a size the patch does not
        divide ...) becoming one ConfigError that names the config field, `what` was built and with which keywords."""
        try:
            return build(*args, **kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{field}: cannot build {what} with {kwargs}: {err}") from err

    @staticmethod
    def maybe_compile(enabled: bool, backend: str, *modules: nn.Module | None) -> None:
        """`torch.compile` each module in place when `enabled` (`nn.Module.compile`: state-dict keys get no
        `_orig_mod.` prefix, so checkpoints load compiled or not)."""
        if enabled:
            for module in modules:
                if module is not None:
                    module.compile(backend=backend)
