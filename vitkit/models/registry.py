"""Model registry: a dict from name to a function that builds the model (timm's `register_model` idea)."""
from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}  # name -> "vision" (image encoders) or another family, e.g. "text"


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: str = "vision"):
    """Register `fn` under its own name; `create_model(fn.__name__, **kw)` then calls it. Used bare
    (`@register_model`, an image encoder) or with a family (`@register_model(family="text")`)."""
    if fn is None:
        return lambda f: register_model(f, family=family)
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    _FAMILY[fn.__name__] = family
    return fn


def list_models(pattern: str = "*", family: str | None = "vision") -> list[str]:
    """Registered model names of a `family` ("vision", "text"; None: all) matching a shell-style `pattern`, sorted."""
    names = [n for n in _MODELS if family is None or _FAMILY[n] == family]
    return sorted(fnmatch.filter(names, pattern))


def create_model(name: str, pretrained: str | os.PathLike | None = None, reset_head: bool = False, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments override its config (num_classes, img_size, ...).
    `pretrained`: a timm/torchvision/transformers checkpoint file loaded by `vitkit.weights.load_pretrained`
    (`reset_head=True` keeps the model's fresh classifier even when the checkpoint's would fit). Without an
    explicit `num_classes`, a checkpoint head of another class count is an error rather than a silent swap."""
    if name not in _MODELS:
        near = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see vitkit.list_models(family=None)"
        raise ValueError(f"unknown model {name!r}{hint}")
    model = _MODELS[name](**kwargs)
    if pretrained is not None:
        from ..weights import load_pretrained  # lazy: vitkit.weights imports vitkit.nn and sits above models

        load_pretrained(model, pretrained, reset_head=reset_head, num_classes_changed_ok="num_classes" in kwargs)
    return model
