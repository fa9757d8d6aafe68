"""One way every composite model (segmenter, DETR-style detector, captioner, VQA) gets its image encoder.

`build_encoder(name, img_size, pretrained, **kwargs)` returns a headless ViT whose `forward_features(images)`
gives all tokens (prefix tokens first) and which exposes `embed_dim`, `patch_embed.grid_size` and
`num_prefix_tokens`, whatever its origin:

- a registered vitkit model name (`vitkit.list_models()`), e.g. `vit_small_patch16_224`;
- `"vit"`: vitkit's `VisionTransformer` built from `kwargs` alone;
- `"timm:<name>"`: a timm ViT (its own loader reads `pretrained`).

`pretrained` is a checkpoint for the encoder: a timm/torchvision/transformers file (through
`vitkit.models.pretrained`), or a vitkit Lightning checkpoint whose `model.encoder.*` weights are taken
(e.g. a VQA model starting from a captioner's encoder). Position embeddings are resampled to `img_size`.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .pretrained import load_pretrained
from .registry import create_model
from .vit import VisionTransformer

TIMM_PREFIX = "timm:"


def build_encoder(name: str, img_size: int | tuple[int, int] | None = None,
                  pretrained: str | os.PathLike | None = None, token_norm: bool = False, **kwargs) -> nn.Module:
    """A headless image encoder (see the module docstring). `token_norm`: the final norm acts on every token, not
    only a pooled one (`fc_norm=False`: what dense heads need); it changes a vitkit encoder's weight names, so a
    model keeps the choice it was trained with."""
    size = {} if img_size is None else {"img_size": img_size}
    if name.startswith(TIMM_PREFIX):
        import timm  # only needed for timm encoders

        extra = {"pretrained": True, "pretrained_cfg_overlay": {"file": os.fspath(pretrained)}} if pretrained else {}
        try:
            return timm.create_model(name[len(TIMM_PREFIX):], num_classes=0, **size, **extra, **kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(f"encoder {name!r}: {err}") from err
    kwargs = {"num_classes": 0, **kwargs, **size}
    if kwargs.get("class_token") is False:
        kwargs.setdefault("global_pool", "avg")
    if token_norm:
        kwargs.setdefault("fc_norm", False)
    inner = task_encoder_weights(pretrained)
    if name == "vit":
        encoder = VisionTransformer(**kwargs)
    else:
        encoder = create_model(name, pretrained=None if inner is not None or pretrained is None else pretrained,
                               **kwargs)
    if not hasattr(encoder, "forward_features") or not hasattr(encoder, "embed_dim"):
        raise ValueError(f"encoder {name!r} has no forward_features/embed_dim; expected a vitkit image encoder "
                         f"such as vit_nano_patch4_32 (vitkit.list_models()) or timm:<name>")
    if inner is not None:
        load_pretrained(encoder, inner, strict=True)
    elif name == "vit" and pretrained is not None:
        load_pretrained(encoder, pretrained)
    return encoder


def task_encoder_weights(path: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """The `model.encoder.*` weights of a vitkit Lightning checkpoint (`.ckpt`), else None."""
    if path is None or not str(path).endswith(".ckpt") or not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    prefix = "model.encoder."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or None


def own_sizes_unused(owner: type, encoder: str | None, values: dict) -> None:
    """With `encoder=<name>`, a composite model's own ViT-size arguments are not used: any set away from its
    default is an error naming it (not a silently different model)."""
    if encoder is None:
        return
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(owner.__init__).parameters.items()}
    changed = sorted(k for k, v in values.items() if v != defaults[k])
    if changed:
        raise ValueError(f"{owner.__name__}: {changed} given with encoder={encoder!r}; expected the encoder's sizes "
                         f"in encoder_kwargs (the ViT-size arguments only build the default encoder)")
