"""AdamW with parameter groups (no decay on norms/biases/position/class tokens; optional layer-wise lr
decay as in BEiT) and a linear warm-up + cosine schedule, shared by every vitkit task."""
from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """timm's grouping: 1-d parameters and the model's `no_weight_decay()` names get no weight decay;
    with `layer_decay`, group `i` of `model.group_matcher()` gets lr scale `layer_decay ** (last - i)`."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is not None and layer_decay != 1.0:
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return adamw(model, groups, lr, betas)


def adamw(model: nn.Module, groups: list[dict], lr: float,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """torch's AdamW over `groups` of `model`'s parameters, fused where it can be (see `_fused_ok`)."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=_fused_ok(model))


def _fused_ok(model: nn.Module) -> bool | None:
    """torch's fused AdamW (one kernel per step instead of a dozen per tensor group: 2.8x faster on CPU for
    ViT-S, and on CUDA) wherever every trainable parameter is a float tensor on CPU or CUDA; else torch's default."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def schedule_steps(trainer, warmup_epochs: float) -> tuple[int, int]:
    """(warm-up steps, total optimiser steps) of a fit: `warmup_epochs` epochs' worth of optimiser steps (at least
    one when positive, at most the whole run), however the run's length is given (`max_epochs` or `max_steps`)."""
    total = int(trainer.estimated_stepping_batches)
    if trainer.train_dataloader is None:  # Lightning loads it for the estimate only when max_epochs is set
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if math.isfinite(batches):
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    else:  # an iterable dataset without a length
        per_epoch = total / max(1, trainer.max_epochs or 1)
    warmup = round(warmup_epochs * per_epoch)
    return min(total, max(1, warmup) if warmup_epochs > 0 else 0), total


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr: linear from ~0 to 1 over `warmup_steps`, then cosine down to `min_lr_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
