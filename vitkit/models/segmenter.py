"""Semantic segmentation with a ViT (Segmenter, Strudel et al. 2021): any vitkit ViT, or a timm ViT through
its `forward_features`, under a segmentation head, logits upsampled bilinearly to the input size; sliding-
window inference (as in mmsegmentation's "slide" mode) for images larger than the training crop.

    model = create_segmenter("segmenter_vit_small_patch16_512", num_classes=150)
    model = create_segmenter("segmenter_vit_tiny_patch8_64", num_classes=5, head="conv")
    model = create_segmenter("segmenter_vit_small_patch16_512", encoder="timm:vit_small_patch16_384")

Segmentation models are registered in vitkit's one registry under the family "segmentation":
`list_segmenters()` is `vitkit.list_models(family="segmentation")`. Their `pretrained` is the encoder's file.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import to_2tuple
from .encoders import build_encoder
from .heads.segmentation import HeadName, build_head
from .registry import create_model, list_models, register_model


class Segmenter(nn.Module):
    """Encoder + head. `forward` maps images (B, 3, H, W) to class logits (B, K, H, W); H and W must be the
    encoder's `img_size` (use `sliding_window_logits` for other sizes).

    The encoder needs `forward_features(x) -> (B, prefix + N, C)`, `num_prefix_tokens` and
    `patch_embed.patch_size` (vitkit's and timm's `VisionTransformer` both have them); the head takes the
    N patch tokens and their grid."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        for attr in ("forward_features", "num_prefix_tokens", "patch_embed"):
            if not hasattr(encoder, attr):
                raise ValueError(f"Segmenter: encoder {type(encoder).__name__} has no `{attr}`; "
                                 "expected a ViT (vitkit or timm)")
        self.encoder = encoder
        self.head = head
        self.num_classes = head.num_classes

    @property
    def patch_size(self) -> tuple[int, int]:
        return to_2tuple(self.encoder.patch_embed.patch_size)

    @property
    def img_size(self) -> tuple[int, int]:
        return to_2tuple(self.encoder.patch_embed.img_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C), prefix (class/register) tokens removed."""
        return self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        grid = (H // self.patch_size[0], W // self.patch_size[1])
        logits = self.head(self.forward_features(x), grid)  # (B, K, h', w')
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)

    # -- conventions shared with timm and vitkit's classifier: optimiser groups, checkpointing --
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = set()
        for prefix, module in (("encoder.", self.encoder), ("head.", self.head)):
            if hasattr(module, "no_weight_decay"):
                names |= {prefix + n for n in module.no_weight_decay()}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's depth groups under `encoder.`; head parameters match none, so layer-wise lr decay
        puts them in the top group (full learning rate), like a classifier's head."""
        return _prefixed_matcher(self.encoder.group_matcher(coarse), r"encoder\.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)


def _prefixed_matcher(matcher: Any, prefix: str) -> Any:
    """Every `^` anchor of a timm group matcher (str, list of (regex, ordinal), dict) moved under `prefix`."""
    if isinstance(matcher, str):
        return matcher.replace("^", "^" + prefix)
    if isinstance(matcher, dict):
        return {k: _prefixed_matcher(v, prefix) for k, v in matcher.items()}
    if isinstance(matcher, (list, tuple)) and matcher and isinstance(matcher[0], (list, tuple)):
        return [(_prefixed_matcher(p, prefix), order) for p, order in matcher]
    return matcher


# ---------------------------------------------------------------------------------------------- building
def build_segmenter(
    encoder: str,
    num_classes: int,
    img_size: int | tuple[int, int],
    head: HeadName = "mask_transformer",
    encoder_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    pretrained: str | os.PathLike | None = None,
) -> Segmenter:
    """Any encoder under any head: `build_segmenter("vit_small_patch16_224", 150, 512, head="linear")`."""
    enc = build_encoder(encoder, img_size, pretrained, token_norm=True, **(encoder_kwargs or {}))
    width = getattr(enc, "embed_dim", None) or enc.num_features
    patch = to_2tuple(enc.patch_embed.patch_size)[0]
    return Segmenter(enc, build_head(head, width, num_classes, patch, **(head_kwargs or {})))


# ---------------------------------------------------------------------------------------------- registry
register_segmenter = register_model(family="segmentation", own_pretrained=True)


def list_segmenters(pattern: str = "*") -> list[str]:
    """Registered segmentation model names matching a shell-style `pattern`, sorted."""
    return list_models(pattern, family="segmentation")


def create_segmenter(name: str, **kwargs) -> Segmenter:
    """Build a registered segmentation model; keywords override its config (num_classes, img_size, head,
    encoder, encoder_kwargs, head_kwargs, pretrained)."""
    names = list_segmenters()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; expected one of {', '.join(names)}"
        raise ValueError(f"unknown segmentation model {name!r}{hint}")
    return create_model(name, **kwargs)


def _segmenter(default_encoder: str, encoder_defaults: dict, default_img_size: int, num_classes: int = 150,
               head: HeadName = "mask_transformer", encoder: str | None = None, encoder_kwargs: dict | None = None,
               head_kwargs: dict | None = None, **kwargs) -> Segmenter:
    """A registered config: `encoder_kwargs` override the encoder's defaults; naming another `encoder` drops them."""
    if encoder is None:
        encoder = default_encoder
    else:
        encoder_defaults = {}
    return build_segmenter(encoder, num_classes, kwargs.pop("img_size", default_img_size), head,
                           {**encoder_defaults, **(encoder_kwargs or {})}, head_kwargs, **kwargs)


# The Segmenter paper's encoders (ViT Ti/S/B/L with 16x16 patches, stochastic depth 0.1) at 512x512 crops.
_PAPER = {"drop_path_rate": 0.1}


@register_segmenter
def segmenter_vit_tiny_patch16_512(**kw) -> Segmenter:
    return _segmenter("vit_tiny_patch16_224", _PAPER, 512, **kw)


@register_segmenter
def segmenter_vit_small_patch16_512(**kw) -> Segmenter:
    return _segmenter("vit_small_patch16_224", _PAPER, 512, **kw)


@register_segmenter
def segmenter_vit_base_patch16_512(**kw) -> Segmenter:
    return _segmenter("vit_base_patch16_224", _PAPER, 512, **kw)


@register_segmenter
def segmenter_vit_large_patch16_640(**kw) -> Segmenter:
    return _segmenter("vit_large_patch16_224", _PAPER, 640, **kw)


# CPU-sized: 64x64 images (the embedded shapes set), 6 blocks of ViT-Ti width (192, 3 heads) or half of it.
_CPU_TINY = {"embed_dim": 192, "depth": 6, "num_heads": 3}
_CPU_NANO = {"embed_dim": 96, "depth": 6, "num_heads": 3}


@register_segmenter
def segmenter_vit_tiny_patch8_64(**kw) -> Segmenter:
    return _segmenter("vit", {"patch_size": 8, **_CPU_TINY}, 64, **kw)


@register_segmenter
def segmenter_vit_nano_patch8_64(**kw) -> Segmenter:
    return _segmenter("vit", {"patch_size": 8, **_CPU_NANO}, 64, **kw)


@register_segmenter
def segmenter_vit_tiny_patch4_64(**kw) -> Segmenter:
    return _segmenter("vit", {"patch_size": 4, **_CPU_TINY}, 64, **kw)


# ---------------------------------------------------------------------------------------------- inference
def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of `window` pixels every `stride` pixels along a side of `size` (>= window);
    the last window is moved back to end at the border, so every pixel is covered (mmsegmentation's grid)."""
    if stride < 1 or window < 1:
        raise ValueError(f"sliding window: window={window}, stride={stride}; expected positive sizes")
    n = max(size - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, size - window), 0) for i in range(n)})


def sliding_window_logits(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
    max_batch: int = 16,
) -> torch.Tensor:
    """Logits (B, K, H, W) of images (B, C, H, W) of any size, from `fn` on (n, C, wh, ww) crops: windows
    overlap by `window - stride`, overlapping logits are averaged. An image smaller than the window is
    padded at the bottom/right (with zeros: the mean colour after normalisation) and the padding cropped off.
    A window as large as the image gives exactly `fn(x)`."""
    wh, ww = to_2tuple(window)
    sh, sw = to_2tuple(stride)
    B, _, H, W = x.shape
    pad_h, pad_w = max(wh - H, 0), max(ww - W, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    Hp, Wp = x.shape[-2:]
    boxes = [(y, xx) for y in window_starts(Hp, wh, sh) for xx in window_starts(Wp, ww, sw)]
    logits = x.new_zeros(B, num_classes, Hp, Wp)
    count = x.new_zeros(1, 1, Hp, Wp)
    for i in range(0, len(boxes), max(1, max_batch // B)):
        chunk = boxes[i : i + max(1, max_batch // B)]
        crops = torch.cat([x[:, :, y : y + wh, xx : xx + ww] for y, xx in chunk])  # (len(chunk) * B, C, wh, ww)
        out = fn(crops).reshape(len(chunk), B, num_classes, wh, ww)
        for (y, xx), o in zip(chunk, out):
            logits[:, :, y : y + wh, xx : xx + ww] += o
            count[:, :, y : y + wh, xx : xx + ww] += 1
    return (logits / count)[:, :, :H, :W]
