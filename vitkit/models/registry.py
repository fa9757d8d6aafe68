"""Model registry: a dict from name to a function that builds the model (timm's `register_model` idea)."""
from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from pathlib import Path
from typing import Callable

from torch import nn

from ..errors import CheckpointError
from .pretrained import load_pretrained

log = logging.getLogger(__name__)
_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}  # name -> "vision" (image encoders) or another family: "text", "detection", "segmentation"
_OWN_PRETRAINED: set[str] = set()  # builders that take `pretrained` themselves


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: str = "vision", own_pretrained: bool = False):
    """Register `fn` under its own name; `create_model(fn.__name__, **kw)` then calls it. Used bare
    (`@register_model`, an image encoder) or with a family (`@register_model(family="text")`). With
    `own_pretrained` the builder gets `pretrained` itself (a segmenter: the file holds its encoder's weights)."""
    if fn is None:
        return lambda f: register_model(f, family=family, own_pretrained=own_pretrained)
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    _FAMILY[fn.__name__] = family
    if own_pretrained:
        _OWN_PRETRAINED.add(fn.__name__)
    return fn


def list_models(pattern: str = "*", family: str | None = "vision") -> list[str]:
    """Registered model names of a `family` ("vision", "text", "detection", "segmentation"; None: all) matching
    a shell-style `pattern`, sorted."""
    names = [n for n in _MODELS if family is None or _FAMILY[n] == family]
    return sorted(fnmatch.filter(names, pattern))


def create_model(name: str | None = None, pretrained: str | os.PathLike | None = None, reset_head: bool = False,
                 strict: bool = True, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments override its config (num_classes, img_size, ...).
    `pretrained`: a timm/torchvision/transformers checkpoint file loaded by `vitkit.models.load_pretrained`, or by
    the model's own `load_pretrained` where it has one (detectors), or by its builder (segmenters: the encoder's file)
    (`reset_head=True` keeps the model's fresh classifier even when the checkpoint's would fit). Without an
    explicit `num_classes`, a checkpoint head of another class count is an error rather than a silent swap.
    Loading is strict: a key that does not load is an error naming the fix; `strict=False` loads what fits.

    A transformers `save_pretrained` folder (or `hf-hub:<org>/<name>` in the local Hub cache) needs no name: its
    config.json picks the architecture, `create_model(pretrained="path/to/folder", num_classes=10)`."""
    if name is None:
        return _from_hf_folder(pretrained, reset_head, strict, **kwargs)
    if name not in _MODELS:
        near = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see vitkit.list_models(family=None)"
        raise ValueError(f"unknown model {name!r}{hint}")
    if name in _OWN_PRETRAINED:
        _no_reset_head(name, reset_head)
        return _MODELS[name](**kwargs) if pretrained is None else _MODELS[name](pretrained=pretrained, **kwargs)
    model = _MODELS[name](**kwargs)
    if pretrained is None:
        return model
    if hasattr(model, "load_pretrained"):
        # a model that knows its checkpoints (detectors: transformers YOLOS, a ViT encoder)
        _no_reset_head(name, reset_head)
        log.info("%s", model.load_pretrained(pretrained))
        return model

    load_pretrained(model, pretrained, reset_head=reset_head, num_classes_changed_ok="num_classes" in kwargs,
                    strict=strict)
    return model


def _from_hf_folder(pretrained, reset_head: bool, strict: bool, **kwargs) -> nn.Module:
    from .hf_folders import is_hf_folder, read_hf_folder
    from .vit import VisionTransformer

    if pretrained is not None and os.path.isdir(pretrained) and not is_hf_folder(pretrained):
        found = sorted(p.name for p in Path(pretrained).iterdir())[:6]
        raise CheckpointError(f"{pretrained}: a folder without config.json (it holds {found}); expected a transformers "
                              f"save_pretrained folder (config.json + weights), or a model name with a weights file")
    if pretrained is None or not is_hf_folder(pretrained):
        raise ValueError(f"create_model: no model name and pretrained={pretrained!r}; expected a registered name "
                         f"(vitkit.list_models()) or a transformers save_pretrained folder (config.json + weights)")
    folder = read_hf_folder(pretrained)
    model = VisionTransformer(**{**folder.kwargs, **kwargs})
    load_pretrained(model, folder, reset_head=reset_head, num_classes_changed_ok="num_classes" in kwargs,
                    strict=strict)
    return model


def _no_reset_head(name: str, reset_head: bool) -> None:
    if reset_head:
        raise ValueError(f"reset_head=True applies to classifiers loaded by vitkit.weights; {name!r} loads its own "
                         f"checkpoints (its load_pretrained or builder says which heads it keeps); "
                         "leave reset_head out")
