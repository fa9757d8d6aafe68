"""Image-to-text models on vitkit's shared blocks: a captioner (a ViT encoder whose tokens a causal text decoder
cross-attends, as in the encoder-decoder of Vaswani et al. 2017 with an image as the source; cf. "Show, Attend
and Tell", Xu et al. 2015) and a VQA model that classifies the answer from question and image tokens fused in one
stack of encoder blocks (single-stream fusion as in ViLT, Kim et al. 2021), or from question tokens that
cross-attend the image tokens (an image-grounded question encoder, as BLIP's, Li et al. 2022)."""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..nn import DecoderBlock, EncoderBlock, padding_mask
from ..nn.text import PositionEmbed1d, TokenEmbed
from .encoders import build_encoder
from .seq2seq import PosEmbed, SpecialIds, TextDecoder, generate


class CaptionTransformer(nn.Module):
    """Images (B, 3, H, W) and shifted caption ids (B, T) -> next-token logits (B, T, V).

    The encoder's tokens (class/register tokens included) are the memory; the decoder's width may differ
    from the encoder's (`memory_dim` of its cross-attention). `generate` decodes greedily or with beam
    search, with the KV cache, exactly as `Seq2SeqTransformer.generate`.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder: str = "vit_nano_patch4_32",
        img_size: int | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        dim: int = 256,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_len: int = 32,
        pos_embed: PosEmbed = "sincos",
        dropout: float = 0.1,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, img_size, pretrained, **(encoder_kwargs or {}))
        self.decoder = TextDecoder(vocab_size, dim, depth, num_heads, max_len, mlp_ratio, pos_embed, dropout,
                                   memory_dim=self.encoder.embed_dim)
        self.special = SpecialIds(pad_id, bos_id, eos_id)
        self.vocab_size, self.max_len = vocab_size, max_len
        for m in self.decoder.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        enc = {f"encoder.{n}" for n in getattr(self.encoder, "no_weight_decay", set)()}
        return enc | {n for n, _ in self.named_parameters() if n.endswith("pos.pos_embed")}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(images)  # (B, 3, H, W) -> (B, N, enc_dim)

    def forward(self, images: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decoder(tgt_in, self.encode(images))

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_new_tokens: int | None = None, beam_size: int = 1,
                 length_penalty: float = 0.6, min_new_tokens: int = 0, use_cache: bool = True) -> torch.Tensor:
        """Images -> caption ids (B, L), EOS-terminated and padded, without BOS."""
        return generate(self.decoder, self.encode(images), None, self.special, max_new_tokens or self.max_len - 1,
                        beam_size, length_penalty, min_new_tokens, use_cache)


class VQATransformer(nn.Module):
    """Images (B, 3, H, W) and question ids (B, Q) -> answer logits (B, num_answers).

    The question is embedded (tokens + 1-D positions), the image encoded by the ViT and projected to the
    fusion width. `fusion="joint"` (default): a type embedding tells question from image, and [answer token,
    question, image] pass through `depth` encoder blocks. `fusion="cross"`: [answer token, question] pass
    through `depth` decoder blocks whose self-attention sees the question (padding masked, not causal) and whose
    cross-attention reads the image tokens. Either way the answer token is classified.
    """

    def __init__(
        self,
        vocab_size: int,
        num_answers: int,
        encoder: str = "vit_nano_patch4_32",
        img_size: int | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        dim: int = 256,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_len: int = 32,
        pos_embed: PosEmbed = "sincos",
        dropout: float = 0.1,
        pad_id: int = 0,
        fusion: Literal["joint", "cross"] = "joint",
    ) -> None:
        super().__init__()
        if fusion not in ("cross", "joint"):
            raise ValueError(f"fusion={fusion!r}; expected 'joint' (one stack over question and image) or 'cross' "
                             f"(the question cross-attends the image)")
        self.fusion = fusion
        self.encoder = build_encoder(encoder, img_size, pretrained, **(encoder_kwargs or {}))
        self.image_proj = nn.Linear(self.encoder.embed_dim, dim)
        self.embed = TokenEmbed(vocab_size, dim)
        self.pos = PositionEmbed1d(max_len, dim, pos_embed)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))  # 0: question, 1: image
        self.answer_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.drop = nn.Dropout(dropout)
        block = DecoderBlock if fusion == "cross" else EncoderBlock
        self.blocks = nn.ModuleList(block(dim, num_heads, mlp_ratio, proj_drop=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_answers)
        self.pad_id, self.num_answers = pad_id, num_answers
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        nn.init.trunc_normal_(self.answer_token, std=0.02)
        for m in [self.image_proj, self.head, *self.blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        enc = {f"encoder.{n}" for n in getattr(self.encoder, "no_weight_decay", set)()}
        return enc | {"type_embed", "answer_token"} | ({"pos.pos_embed"} if self.pos.kind == "learn" else set())

    def forward(self, images: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        img = self.image_proj(self.encoder.forward_features(images)) + self.type_embed[1]  # (B, N, dim)
        q = self.pos(self.embed(question)) + self.type_embed[0]  # (B, Q, dim)
        text = [self.answer_token.expand(B, -1, -1), q]
        if self.fusion == "joint":
            text.append(img)
        x = self.drop(torch.cat(text, dim=1))  # (B, 1 + Q [+ N], dim)
        is_pad = torch.zeros(B, x.shape[1], dtype=torch.bool, device=x.device)
        is_pad[:, 1 : 1 + q.shape[1]] = question == self.pad_id
        mask = padding_mask(is_pad)  # question padding is never attended
        if self.fusion == "joint":
            for blk in self.blocks:
                x = blk(x, attn_mask=mask)
        else:
            memory = self.drop(img)  # (B, N, dim), read by every block's cross-attention
            for blk in self.blocks:
                x = blk(x, memory, attn_mask=mask)
        return self.head(self.norm(x[:, 0]))
