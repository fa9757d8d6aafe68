"""vitkit's shared transformer core: one attention, one MLP, one encoder and one decoder block, and the
patch/position embeddings. Imports only torch."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from .attention import Attention, KVCache, StaticKVCache, causal_mask, padding_mask, set_sdpa_backends
from .blocks import AttentionPool, DecoderBlock, DropPath, EncoderBlock, LayerScale, Mlp, QuickGELU, make_act
from .embed import PatchEmbed, resample_pos_embed, sincos_2d_pos_embed, to_2tuple
from .rope import RotaryEmbedding, apply_rope
from .text import PositionEmbed1d, TokenEmbed, sincos_1d_pos_embed

__all__ = [
    "Attention", "KVCache", "StaticKVCache", "causal_mask", "padding_mask", "DecoderBlock", "DropPath",
    "EncoderBlock", "LayerScale", "Mlp", "AttentionPool", "QuickGELU", "make_act", "RotaryEmbedding", "apply_rope",
    "PatchEmbed",
    "resample_pos_embed", "sincos_2d_pos_embed", "to_2tuple", "capture_attention", "set_sdpa_backends",
    "PositionEmbed1d", "TokenEmbed", "sincos_1d_pos_embed",
]


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[Attention]]:
    """Within the block, every `Attention` of `model` keeps its last attention weights in `attn_weights`.
    Yields the attention modules in forward order of registration; restores the fast path on exit."""
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    for a in attns:
        a.capture, a.attn_weights = True, None
    try:
        yield attns
    finally:
        for a in attns:
            a.capture = False
