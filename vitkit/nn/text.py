"""Token embedding and 1-D position embeddings (sinusoidal or learned) for text transformers
(Vaswani et al. 2017, "Attention Is All You Need", sections 3.4-3.5). Imports only torch."""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn


def sincos_1d_pos_embed(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal positions (length, dim): PE[p, 2i] = sin(p / T^(2i/dim)), PE[p, 2i+1] = cos(...)."""
    if dim % 2:
        raise ValueError(f"sinusoidal position embedding needs an even dim; got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    omega = 1.0 / temperature ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = (pos * omega).sin(), (pos * omega).cos()
    return pe.float()


class TokenEmbed(nn.Module):
    """Token ids (B, N) -> vectors (B, N, dim) scaled by sqrt(dim) (Vaswani et al.); `weight` doubles as the
    tied output projection: `logits(x) = x @ weight.T`."""

    def __init__(self, vocab_size: int, dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        if vocab_size <= 0:
            raise ValueError(f"TokenEmbed: vocab_size={vocab_size}; expected a positive number of tokens")
        self.vocab_size, self.dim = vocab_size, dim
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        self.padding_idx = padding_idx
        nn.init.normal_(self.weight, std=dim**-0.5)  # unit variance after the sqrt(dim) scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight, self.padding_idx) * math.sqrt(self.dim)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, vocab_size) with the embedding matrix as the output projection."""
        return x @ self.weight.t()


class PositionEmbed1d(nn.Module):
    """Adds positions `offset .. offset + N - 1` to (B, N, dim) tokens: fixed sinusoids or learned vectors.
    `offset` lets cached decoding add the position of the step it computes (a 0-d tensor in an exported step,
    whose caller keeps it below `max_len`)."""

    def __init__(self, max_len: int, dim: int, kind: Literal["sincos", "learn"] = "sincos") -> None:
        super().__init__()
        if kind not in ("sincos", "learn"):
            raise ValueError(f"position embedding kind={kind!r}; expected 'sincos' or 'learn'")
        self.max_len, self.kind = max_len, kind
        if kind == "learn":
            self.pos_embed = nn.Parameter(torch.empty(1, max_len, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:  # a buffer rebuilt from max_len, so it never needs to be stored in a checkpoint
            self.register_buffer("pos_embed", sincos_1d_pos_embed(max_len, dim)[None], persistent=False)

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        n = x.shape[1]
        if isinstance(offset, torch.Tensor):  # an exported decoding step: the position is a 0-d input of the graph
            index = offset.reshape(1) + torch.arange(n, device=x.device)
            return x + self.pos_embed.index_select(1, index).to(x.dtype)
        if offset + n > self.max_len:
            raise ValueError(
                f"sequence of {offset + n} positions is longer than max_len={self.max_len}; "
                f"build the model with a larger max_len or shorten the input"
            )
        return x + self.pos_embed[:, offset : offset + n].to(x.dtype)
