"""Multi-head attention, self or cross, on PyTorch's fused SDPA (Vaswani et al. 2017, "Attention Is All You Need").

The one attention of vitkit: the ViT encoder, the detection/segmentation heads and the text path all
use this class. Masks follow `F.scaled_dot_product_attention`: a boolean mask is True where a query may
attend, a float mask is added to the scores. Both broadcast to (B, heads, N_query, N_key).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope


@dataclass
class KVCache:
    """Keys and values kept between decoding steps, (B, heads, N_past, head_dim) each.

    Self-attention appends the new step's keys/values; cross-attention computes them from the memory
    once and reuses them afterwards.
    """

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    @property
    def position(self) -> int:
        """Position of the next token to compute (what 1-D position embeddings start from)."""
        return self.length

    @property
    def needs_mask(self) -> bool:
        """Whether causal self-attention over this cache needs an explicit mask (not SDPA's top-left is_causal)."""
        return self.length > 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys/values; returns all keys/values to attend to."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def causal_mask(self, n_query: int, device=None) -> torch.Tensor:
        """(n_query, N_keys) after `append`: the new tokens see the past and themselves in order."""
        return causal_mask(n_query, self.length, device)


@dataclass
class StaticKVCache(KVCache):
    """A fixed-size self-attention cache for exported decoders: `k`, `v` are (B, heads, max_len, head_dim) slots
    and `pos` a 0-d int64 tensor, the slot of the one token a step computes. Shapes never change between steps
    and the position is a tensor, so a graph traced once serves every step (the slots past `pos` are masked)."""

    pos: torch.Tensor | None = None

    @property
    def position(self) -> torch.Tensor:
        return self.pos

    @property
    def needs_mask(self) -> bool:
        return True

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[2] != 1:
            raise ValueError(f"StaticKVCache: a step computes one token; got {k.shape[2]}")
        index = self.pos.reshape(1, 1, 1, 1).expand_as(k)  # (B, heads, 1, head_dim): slot `pos` of every row
        self.k, self.v = self.k.scatter(2, index, k), self.v.scatter(2, index, v)
        return self.k, self.v

    def causal_mask(self, n_query: int, device=None) -> torch.Tensor:
        return (torch.arange(self.k.shape[2], device=device) <= self.pos)[None, :]  # (1, max_len)


_SDPA_BACKENDS: list | None = None  # None: torch's own choice


def set_sdpa_backends(names: Sequence[str] | None) -> None:
    """The order in which vitkit's attention tries SDPA's fused kernels, e.g. `["cudnn", "flash", "efficient",
    "math"]` (cuDNN first pays on Hopper GPUs at ViT sequence lengths); `None` restores torch's default order.
    Applies to every vitkit `Attention`, not to other libraries' SDPA calls."""
    global _SDPA_BACKENDS
    if names is None:
        _SDPA_BACKENDS = None
        return
    from torch.nn.attention import SDPBackend

    table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise ValueError(f"set_sdpa_backends: got {list(names)}; expected a non-empty list from {sorted(table)}")
    _SDPA_BACKENDS = [table[n] for n in names]


def _sdpa_context():
    if _SDPA_BACKENDS is None:
        return nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(_SDPA_BACKENDS, set_priority=True)


def causal_mask(n_query: int, n_key: int, device=None) -> torch.Tensor:
    """Boolean mask (n_query, n_key), bottom-right aligned: query i sees keys up to n_key - n_query + i."""
    offset = n_key - n_query
    q = torch.arange(n_query, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    return k <= q + offset


def padding_mask(key_is_pad: torch.Tensor) -> torch.Tensor:
    """(B, N_key) True-at-padding -> boolean attention mask (B, 1, 1, N_key), True where attending is allowed."""
    return ~key_is_pad[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention. `cross=False`: fused `qkv` projection (timm names); `cross=True`: `q` from the
    queries and `kv` from a memory of width `kv_dim`.

    Set `capture = True` (or use `vitkit.nn.capture_attention`) to keep the attention weights of the last
    call in `attn_weights` (B, heads, N_query, N_key); the output is the same, computed without SDPA.

    `forward(rope=emb)` rotates queries and keys after the q/k norms (2-D RoPE, `vitkit.nn.rope`), all but the
    first `num_prefix_tokens` (class, registers); `rope_rotate_half` picks the rotated-halves channel layout
    (DINOv3) over interleaved pairs. `scale_norm` adds a LayerNorm `norm` before the output projection (EVA-02).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        cross: bool = False,
        kv_dim: int | None = None,
        norm_eps: float = 1e-6,
        scale_norm: bool = False,
        num_prefix_tokens: int = 0,
        rope_rotate_half: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}; expected a multiple")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(kv_dim or dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.num_prefix_tokens = num_prefix_tokens
        self.rope_rotate_half = rope_rotate_half
        self.scale_norm = scale_norm
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.capture = False
        self.attn_weights: torch.Tensor | None = None

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        # (B, N, n*C) -> (n, B, heads, N, C/heads)
        B, N, _ = t.shape
        return t.reshape(B, N, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _project(self, x: torch.Tensor, context: torch.Tensor | None, cache: KVCache | None,
                 num_queries: int | None = None):
        if not self.cross and num_queries is not None:
            # queries from the first tokens only, keys/values from all: the fused qkv weight split in two
            C, w, b = x.shape[-1], self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :num_queries], w[:C], None if b is None else b[:C])
            k, v = self._heads(F.linear(x, w[C:], None if b is None else b[C:]), 2).unbind(0)
            return self._heads(q, 1)[0], k, v
        if not self.cross:
            q, k, v = self._heads(self.qkv(x), 3).unbind(0)
            if cache is not None:
                k, v = cache.append(k, v)
            return q, k, v
        q = self._heads(self.q(x), 1)[0]
        if cache is not None and cache.k is not None:
            return q, cache.k, cache.v
        k, v = self.memory_kv(context)
        if cache is not None:
            cache.k, cache.v = k, v
        return q, k, v

    def memory_kv(self, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (B, heads, M, head_dim) of a memory (B, M, kv_dim): what a decoder's
        cross cache holds after its first step."""
        if context is None:
            raise ValueError("cross-attention needs a `context` (the memory to attend to); got None")
        k, v = self._heads(self.kv(context), 2).unbind(0)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        num_queries: int | None = None,
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`num_queries` (self-attention without cache): only the first `num_queries` tokens ask, all tokens
        answer; the output is theirs, (B, num_queries, C) — exactly those rows of the full output."""
        if num_queries is not None and (self.cross or cache is not None or is_causal):
            raise ValueError("num_queries applies to non-causal self-attention without a KV cache")
        B, N, C = x.shape
        N = N if num_queries is None else min(num_queries, N)
        self_cache = cache if (cache is not None and not self.cross) else None
        masked_past = self_cache is not None and self_cache.needs_mask  # read before this step's keys are added
        q, k, v = self._project(x, context, cache, num_queries)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            if self.cross or cache is not None:
                raise ValueError("rope applies to self-attention over an image's tokens, without a KV cache")
            q = apply_rope(q, rope, self.num_prefix_tokens, self.rope_rotate_half)
            k = apply_rope(k, rope, self.num_prefix_tokens, self.rope_rotate_half)
        if is_causal and (masked_past or attn_mask is not None or self.capture):
            # SDPA's is_causal is top-left aligned and excludes a mask: spell the mask out instead.
            causal = (self_cache.causal_mask(N, x.device) if self_cache is not None
                      else causal_mask(N, k.shape[2], device=x.device))
            attn_mask = causal if attn_mask is None else _combine(attn_mask, causal)
            is_causal = False
        if self.capture:
            out = self._explicit(q, k, v, attn_mask, is_causal)
        else:
            drop = self.attn_drop.p if self.training else 0.0
            with _sdpa_context():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, heads, N, C/heads) -> (B, N, C)
        if self.scale_norm:
            out = self.norm(out)
        return self.proj_drop(self.proj(out))

    def _explicit(self, q, k, v, attn_mask, is_causal):
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, M)
        if is_causal:
            attn_mask = causal_mask(q.shape[2], k.shape[2], device=q.device)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        attn = scores.softmax(dim=-1)
        self.attn_weights = attn
        return self.attn_drop(attn) @ v


def _combine(mask: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))
