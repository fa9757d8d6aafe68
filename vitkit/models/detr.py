"""DETR-style detector with a plain ViT encoder (Carion et al. 2020, DETR; the ViT backbone as in
"Benchmarking Detection Transfer Learning with Vision Transformers", Li et al. 2021): the encoder's tokens
are the memory of `DetrHead`'s object queries."""
from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

from ..nn import to_2tuple
from .encoders import build_encoder, own_sizes_unused
from .heads.detection import DetrHead, Output
from .pretrained import load_pretrained
from .registry import register_model


class DetrViT(nn.Module):
    """ViT encoder (`forward_features`: all tokens) + DETR head. `forward(images, targets=None)` returns the
    head's dict ("pred_logits", "pred_boxes" normalised cxcywh, "aux_outputs", "dn" when denoising).

    Args:
        num_classes: object classes (without "no object").
        img_size: input size; the patch size must divide it.
        patch_size, embed_dim, depth, num_heads, mlp_ratio, class_token, drop_path_rate: the ViT encoder.
        pos_embed: the encoder's position embedding, "learn" or fixed 2-D "sincos" (helps from scratch).
        decoder_dim, decoder_depth, decoder_heads, num_queries, query_init, dn_groups, label_noise, box_noise:
            the head (see `DetrHead`).
        encoder: instead of the ViT built from the sizes above, any encoder `vitkit.models.build_encoder` makes:
            a registered vitkit name (e.g. "vit_small_patch16_224") or "timm:<name>", with `encoder_kwargs`
            (the sizes above must then stay at their defaults).
        encoder_kwargs: keyword arguments for that encoder (depth, drop_path_rate, ...).
    """

    def __init__(
        self,
        num_classes: int = 80,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        pos_embed: Literal["learn", "sincos"] = "learn",
        drop_path_rate: float = 0.0,
        decoder_dim: int = 256,
        decoder_depth: int = 6,
        decoder_heads: int = 8,
        num_queries: int = 100,
        query_init: Literal["encoder", "learned"] = "encoder",
        dn_groups: int = 5,
        label_noise: float = 0.2,
        box_noise: float = 0.4,
        encoder: str | None = None,
        encoder_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        if encoder is None:
            self.encoder = build_encoder("vit", img_size, token_norm=True, patch_size=patch_size, embed_dim=embed_dim,
                                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                         class_token=class_token, global_pool="token" if class_token else "avg",
                                         pos_embed=pos_embed, drop_path_rate=drop_path_rate)
        else:
            own_sizes_unused(DetrViT, encoder, dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                                    num_heads=num_heads, mlp_ratio=mlp_ratio, class_token=class_token,
                                                    pos_embed=pos_embed, drop_path_rate=drop_path_rate))
            self.encoder = build_encoder(encoder, img_size, token_norm=True, **(encoder_kwargs or {}))
        if encoder_kwargs and encoder is None:
            raise ValueError(f"DetrViT: encoder_kwargs={encoder_kwargs} without an encoder name; expected encoder: "
                             f"<name> (or the ViT sizes as DetrViT's own arguments)")
        self.head = DetrHead(
            num_classes, self.encoder.embed_dim, self.encoder.patch_embed.grid_size, self.encoder.num_prefix_tokens,
            dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads, num_queries=num_queries,
            query_init=query_init, dn_groups=dn_groups, label_noise=label_noise, box_noise=box_noise,
        )

    @property
    def img_size(self) -> tuple[int, int]:
        return to_2tuple(self.encoder.patch_embed.img_size)  # vitkit's and timm's PatchEmbed both keep it

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Output:
        return self.head(self.encoder.forward_features(images), targets)  # (B, 3, H, W) -> tokens -> boxes

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"head.query_anchors.weight"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def load_pretrained(self, checkpoint: str | os.PathLike):
        """Initialise the encoder from a timm/torchvision/transformers ViT checkpoint (its classifier is
        dropped, position embeddings resampled); the head stays at its initialisation. Returns the report."""
        return load_pretrained(self.encoder, checkpoint)


def _detr(vit: dict, head: dict, **kwargs) -> DetrViT:
    """The registered sizes, `kwargs` over them; with `encoder=<name>` the ViT sizes give way to that encoder's."""
    if kwargs.get("encoder") is not None:
        vit = {"img_size": vit["img_size"]}
    return DetrViT(**{**vit, **head, **kwargs})


_DECODER = dict(decoder_dim=256, decoder_depth=6, decoder_heads=8, num_queries=100)


@register_model(family="detection")
def detr_vit_small_patch16(**kw) -> DetrViT:
    """ViT-S/16 encoder at 512 px, 6-layer 256-wide decoder, 100 queries (COCO)."""
    return _detr(dict(img_size=512, patch_size=16, embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1),
                 _DECODER, **kw)


@register_model(family="detection")
def detr_vit_tiny_patch16(**kw) -> DetrViT:
    """ViT-Ti/16 encoder at 512 px, 6-layer 256-wide decoder, 100 queries."""
    return _detr(dict(img_size=512, patch_size=16, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1),
                 _DECODER, **kw)


@register_model(family="detection")
def detr_vit_nano_patch8_64(**kw) -> DetrViT:
    """CPU-sized, for training from scratch: a 4-block 96-wide ViT with 8x8 patches and fixed sin-cos positions on
    64 px images, a 3-layer 96-wide decoder, 16 queries (on shapes it learns as fast per step as width 128, and
    each step costs 30 % less)."""
    return _detr(
        dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, pos_embed="sincos"),
        dict(decoder_dim=96, decoder_heads=3, decoder_depth=3, num_queries=16), **kw,
    )
