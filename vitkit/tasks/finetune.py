"""Fine-tuning helpers for the classification task: freezing (linear probe / first-N blocks, as in MAE's
and BEiT's recipes), Mixup/CutMix on the batch (Zhang et al. 2018, Yun et al. 2019, through timm) and an
EMA of the weights (timm's ModelEmaV3) kept out of the LightningModule's state dict."""
from __future__ import annotations

from typing import Any, Literal

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3
from torch import nn

from ..errors import ConfigError

Freeze = Literal["none", "encoder"] | int
_STEM = ("patch_embed", "pos_embed", "cls_token", "reg_token")


def frozen_modules(model: nn.Module, freeze: Freeze) -> list[str]:
    """Names of the top-level parts that `freeze` fixes: "encoder" leaves only `head` (and `fc_norm`)
    trainable; an int N fixes the stem (patch embedding, position embedding, class/register tokens)
    and blocks 0..N-1."""
    if freeze == "none":
        return []
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "head"):
        raise ConfigError(f"model.freeze={freeze!r} needs a model with `blocks` and `head`; got {type(model).__name__}")
    if freeze == "encoder":
        return [n for n, _ in _top_level(model) if n not in ("head", "fc_norm")]
    if isinstance(freeze, bool) or not isinstance(freeze, int) or not 0 <= freeze <= len(blocks):
        raise ConfigError(f"model.freeze={freeze!r}: expected 'none', 'encoder' or a block count in 0..{len(blocks)}")
    return [n for n in _STEM if getattr(model, n, None) is not None] + [f"blocks.{i}" for i in range(freeze)]


def _top_level(model: nn.Module) -> list[tuple[str, nn.Module | nn.Parameter]]:
    return list(model.named_children()) + [(n, p) for n, p in model.named_parameters(recurse=False)]


def freeze_(model: nn.Module, freeze: Freeze) -> list[str]:
    """Set `requires_grad=False` on every parameter under `frozen_modules(model, freeze)`; returns their names
    (timm's param-group builders skip such parameters, so the optimiser never sees them)."""
    prefixes = frozen_modules(model, freeze)
    names = [n for n, _ in model.named_parameters() if _under(n, prefixes)]
    for n, p in model.named_parameters():
        if _under(n, prefixes):
            p.requires_grad_(False)
    return names


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class BatchMixer:
    """timm `Mixup` (mixup and/or cutmix) on a training batch, returning soft targets for
    `SoftTargetCrossEntropy`. timm's batch mode pairs sample i with B-1-i and needs an even batch: an odd
    batch (a last partial one) is left unmixed, with the same label-smoothed one-hot targets."""

    def __init__(self, mixup: float, cutmix: float, prob: float, label_smoothing: float, num_classes: int) -> None:
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, label_smoothing=label_smoothing,
                         num_classes=num_classes)
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W), (B,) int -> mixed (B, C, H, W), soft targets (B, K)."""
        if x.shape[0] % 2:
            return x, mixup_target(y, self.num_classes, 1.0, self.label_smoothing)
        return self.mix(x, y)


def build_ema(model: nn.Module, decay: float, warmup: bool = False) -> ModelEmaV3:
    """A frozen eval-mode copy of `model` whose weights follow `ema = decay * ema + (1 - decay) * live`. With
    `warmup` the decay ramps up from 0 over the first steps (timm's), so the average does not start from init."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"model.ema_decay={decay}: expected a value in [0, 1), e.g. 0.9998")
    ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
    ema.requires_grad_(False)
    return ema


class WeightEMA:
    """LightningModule mixin: an optional EMA of `self.model`'s weights (timm ModelEmaV3), used in eval mode
    through `self.net` and saved in checkpoints under ``ema_state_dict``. The copy is kept out of the module
    tree (state_dict, parameters(), the model summary); device and dtype moves still reach it."""

    def init_ema(self, decay: float | None, warmup: bool = False) -> None:
        self.__dict__["ema"] = build_ema(self.model, decay, warmup) if decay is not None else None

    @property
    def net(self) -> nn.Module:
        """The weights a forward uses: the live model in training, the EMA copy (when on) in eval mode."""
        return self.ema.module if self.ema is not None and not self.training else self.model

    def optimizer_step(self, *args, **kwargs) -> None:
        """Update the EMA right after each optimiser step (so with gradient accumulation, once per step), inside
        the batch: a checkpoint saved at that batch's end (pre-emption, every_n_train_steps) already holds it."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # the trainer counts this step once the hook returns
            self.ema.update(self.model, step=self.trainer.global_step + 1 if self.ema.use_warmup else None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.module.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the EMA; a checkpoint saved without one starts the EMA from its live weights."""
        if self.ema is None:
            return
        state = checkpoint.get("ema_state_dict")
        if state is None:
            state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        self.ema.module.load_state_dict(state)

    def _apply(self, fn, *args, **kwargs):
        """Device/dtype moves (`.to`, `.cuda`, `.half`) reach the EMA copy, which is not a registered child."""
        super()._apply(fn, *args, **kwargs)
        if self.__dict__.get("ema") is not None:
            self.ema._apply(fn, *args, **kwargs)
        return self
