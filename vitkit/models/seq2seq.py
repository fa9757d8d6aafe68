"""Encoder-decoder Transformer for sequence-to-sequence tasks (Vaswani et al. 2017, "Attention Is All You
Need"): shared token embeddings tied with the output projection, sinusoidal or learned positions, padding
and causal masks, and greedy / beam-search decoding (GNMT length penalty, Wu et al. 2016) with a KV cache
in the decoder's self- and cross-attention. Built on vitkit.nn's `EncoderBlock` and `DecoderBlock` (pre-norm,
so each stack ends in a LayerNorm); `TextDecoder` is shared with the image captioner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..nn import DecoderBlock, EncoderBlock, KVCache, padding_mask
from ..nn.text import PositionEmbed1d, TokenEmbed
from .registry import register_model

PosEmbed = Literal["sincos", "learn"]


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the decoder needs: padding, start of sequence, end of sequence."""

    pad: int = 0
    bos: int = 1
    eos: int = 2


class TextEncoder(nn.Module):
    """Token ids (B, N) -> memory (B, N, dim): embedding + positions, `depth` encoder blocks, final norm.
    Padding keys are masked, so a padded batch gives each sequence the output it has alone."""

    def __init__(self, embed: TokenEmbed, max_len: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 pos_embed: PosEmbed = "sincos", dropout: float = 0.1, attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        dim = embed.dim
        self.embed = embed
        self.pos = PositionEmbed1d(max_len, dim, pos_embed)
        self.drop = nn.Dropout(dropout)
        dpr = torch.linspace(0, drop_path_rate, max(depth, 1)).tolist()
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, mlp_ratio, drop_path=dpr[i], attn_drop=attn_dropout, proj_drop=dropout)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop(self.pos(self.embed(ids)))  # (B, N) -> (B, N, dim)
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        return self.norm(x)


class TextDecoder(nn.Module):
    """Causal text decoder: embedding + positions, `depth` decoder blocks that cross-attend to a memory
    (a text encoder's output or a ViT's tokens), final norm, and next-token logits through the embedding
    matrix (`tie_embeddings`) or a separate linear layer.

    `forward(ids, memory, memory_mask, caches)` with `caches` from `new_caches()` processes only the new
    tokens and appends their keys/values; positions continue from the cached length.
    """

    def __init__(self, vocab_size: int, dim: int, depth: int, num_heads: int, max_len: int,
                 mlp_ratio: float = 4.0, pos_embed: PosEmbed = "sincos", dropout: float = 0.1,
                 attn_dropout: float = 0.0, drop_path_rate: float = 0.0, memory_dim: int | None = None,
                 embed: TokenEmbed | None = None, tie_embeddings: bool = True, pad_id: int = 0) -> None:
        super().__init__()
        self.embed = embed if embed is not None else TokenEmbed(vocab_size, dim, padding_idx=None)
        self.pos = PositionEmbed1d(max_len, dim, pos_embed)
        self.drop = nn.Dropout(dropout)
        dpr = torch.linspace(0, drop_path_rate, max(depth, 1)).tolist()
        self.blocks = nn.ModuleList(
            DecoderBlock(dim, num_heads, mlp_ratio, drop_path=dpr[i], attn_drop=attn_dropout, proj_drop=dropout,
                         memory_dim=memory_dim)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = None if tie_embeddings else nn.Linear(dim, vocab_size, bias=False)
        self.max_len = max_len

    def new_caches(self) -> list[tuple[KVCache, KVCache]]:
        """Empty (self-attention, cross-attention) caches, one pair per block."""
        return [(KVCache(), KVCache()) for _ in self.blocks]

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                caches: list[tuple[KVCache, KVCache]] | None = None) -> torch.Tensor:
        offset = caches[0][0].position if caches else 0
        x = self.drop(self.pos(self.embed(ids), offset))  # (B, T) -> (B, T, dim)
        for i, blk in enumerate(self.blocks):
            x = blk(x, memory, memory_mask=memory_mask, is_causal=True, cache=caches[i] if caches else None)
        x = self.norm(x)
        return self.embed.logits(x) if self.head is None else self.head(x)  # (B, T, vocab)


class Seq2SeqTransformer(nn.Module):
    """Vaswani et al.'s encoder-decoder: source ids (B, S) and shifted target ids (B, T) -> logits (B, T, V).

    With `tie_embeddings` one matrix embeds source and target tokens and projects the decoder output to the
    vocabulary (a joint BPE vocabulary, as in the paper's section 3.4). Source padding (`pad_id`) is masked
    in encoder self-attention and decoder cross-attention; target padding only ever follows real tokens, so
    the causal mask already keeps it away from them (the loss ignores it).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 512,
        enc_depth: int = 6,
        dec_depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        max_len: int = 256,
        pos_embed: PosEmbed = "sincos",
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        tie_embeddings: bool = True,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> None:
        super().__init__()
        if pos_embed not in ("sincos", "learn"):
            raise ValueError(f"pos_embed={pos_embed!r}; expected 'sincos' or 'learn'")
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary of {vocab_size} tokens")
        self.vocab_size, self.dim, self.max_len = vocab_size, dim, max_len
        self.special = SpecialIds(pad_id, bos_id, eos_id)
        src_embed = TokenEmbed(vocab_size, dim)
        tgt_embed = src_embed if tie_embeddings else TokenEmbed(vocab_size, dim)
        common = dict(mlp_ratio=mlp_ratio, pos_embed=pos_embed, dropout=dropout, attn_dropout=attn_dropout,
                      drop_path_rate=drop_path_rate)
        self.encoder = TextEncoder(src_embed, max_len, enc_depth, num_heads, **common)
        self.decoder = TextDecoder(vocab_size, dim, dec_depth, num_heads, max_len, embed=tgt_embed,
                                   tie_embeddings=tie_embeddings, **common)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("pos.pos_embed")}

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ids (B, S) -> memory (B, S, dim) and its padding mask (B, 1, 1, S), True where attended."""
        mask = padding_mask(src == self.special.pad)
        return self.encoder(src, mask), mask

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decoder(tgt_in, memory, mask)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: int | None = None, beam_size: int = 1,
                 length_penalty: float = 0.6, min_new_tokens: int = 0, use_cache: bool = True) -> torch.Tensor:
        """Source ids (B, S) -> generated ids (B, L): EOS-terminated, padded with `pad_id` after EOS, without
        the leading BOS. `beam_size=1` is greedy decoding. `use_cache=False` recomputes the whole prefix at
        every step (the reference the cache is tested against)."""
        memory, mask = self.encode(src)
        return generate(self.decoder, memory, mask, self.special, max_new_tokens or self.max_len - 1,
                        beam_size, length_penalty, min_new_tokens, use_cache)


# ----------------------------------------------------------------------------------------------- decoding
def generate(decoder: TextDecoder, memory: torch.Tensor, memory_mask: torch.Tensor | None, special: SpecialIds,
             max_new_tokens: int, beam_size: int = 1, length_penalty: float = 0.6, min_new_tokens: int = 0,
             use_cache: bool = True) -> torch.Tensor:
    """Decode from a memory (B, M, C): greedy when `beam_size == 1`, else beam search."""
    if max_new_tokens < 1 or max_new_tokens >= decoder.max_len:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected 1..{decoder.max_len - 1} (the decoder's "
                         f"max_len {decoder.max_len} includes the start token)")
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size}; expected 1 or more")
    was_training = decoder.training
    decoder.eval()
    try:
        if beam_size == 1:
            return _greedy(decoder, memory, memory_mask, special, max_new_tokens, min_new_tokens, use_cache)
        return _beam(decoder, memory, memory_mask, special, max_new_tokens, beam_size, length_penalty,
                     min_new_tokens, use_cache)
    finally:
        decoder.train(was_training)


def _next_log_probs(decoder, ids, memory, memory_mask, caches, special, step, min_new_tokens) -> torch.Tensor:
    """Log-probabilities (B, V) of the token after `ids`; the cache path feeds only the newest token."""
    logits = decoder(ids[:, -1:] if caches is not None else ids, memory, memory_mask, caches)[:, -1]
    logp = logits.float().log_softmax(dim=-1)
    logp[:, [special.pad, special.bos]] = float("-inf")  # never generated
    if step < min_new_tokens:
        logp[:, special.eos] = float("-inf")
    return logp


def _greedy(decoder, memory, memory_mask, special, max_new_tokens, min_new_tokens, use_cache) -> torch.Tensor:
    B = memory.shape[0]
    ids = torch.full((B, 1), special.bos, dtype=torch.long, device=memory.device)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    caches = decoder.new_caches() if use_cache else None
    for step in range(max_new_tokens):
        logp = _next_log_probs(decoder, ids, memory, memory_mask, caches, special, step, min_new_tokens)
        nxt = logp.argmax(dim=-1).masked_fill(done, special.pad)  # (B,)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == special.eos
        if bool(done.all()):
            break
    return ids[:, 1:]


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """((5 + length) / 6) ** alpha (Wu et al. 2016); alpha = 0 ranks hypotheses by total log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def _beam(decoder, memory, memory_mask, special, max_new_tokens, K, alpha, min_new_tokens, use_cache) -> torch.Tensor:
    """Beam search in the style of fairseq/HF: per source, keep the K best unfinished beams; a beam ending in
    EOS among the top K candidates becomes a finished hypothesis scored log P / length_penalty. A source is
    done once it has K finished hypotheses that no unfinished beam can still beat."""
    B, device = memory.shape[0], memory.device
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, M, C): each source's beams share its memory
    memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(K, dim=0)
    ids = torch.full((B * K, 1), special.bos, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    caches = decoder.new_caches() if use_cache else None
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    best_possible = max(gnmt_length_penalty(max_new_tokens, alpha), gnmt_length_penalty(1, alpha))
    for step in range(max_new_tokens):
        logp = _next_log_probs(decoder, ids, memory, memory_mask, caches, special, step, min_new_tokens)
        V = logp.shape[-1]
        cand = (scores.reshape(-1, 1) + logp).reshape(B, K * V)  # (B, K*V) total log-probabilities
        top_s, top_i = cand.topk(min(2 * K, K * V), dim=1)
        new_scores = torch.full((B, K), float("-inf"), device=device)
        new_src = torch.arange(B, device=device)[:, None].mul(K).expand(B, K).clone()  # row in ids to extend
        new_tok = torch.full((B, K), special.pad, dtype=torch.long, device=device)
        prefixes = ids[:, 1:].tolist()
        for b, (row_s, row_i) in enumerate(zip(top_s.tolist(), top_i.tolist())):
            if done[b]:
                continue
            kept = 0
            for rank, (s, flat) in enumerate(zip(row_s, row_i)):
                if s == float("-inf"):
                    break
                beam, tok = divmod(flat, V)
                if tok == special.eos:
                    if rank < K:  # only an EOS among the K best counts (otherwise it would crowd out beams)
                        hyp = prefixes[b * K + beam] + [tok]
                        finished[b].append((s / gnmt_length_penalty(len(hyp), alpha), hyp))
                    continue
                new_scores[b, kept], new_src[b, kept], new_tok[b, kept] = s, b * K + beam, tok
                kept += 1
                if kept == K:
                    break
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]
            best_alive = float(new_scores[b, 0])
            no_beats = len(finished[b]) == K and finished[b][-1][0] >= best_alive / best_possible
            done[b] = best_alive == float("-inf") or no_beats
        if all(done):
            break
        rows = new_src.reshape(-1)
        ids = torch.cat([ids[rows], new_tok.reshape(-1, 1)], dim=1)
        scores = new_scores
        if caches is not None:
            _reorder(caches, rows)
    prefixes = ids[:, 1:].tolist()
    for b in range(B):  # sources that ran out of steps: their live beams end here, without EOS
        if not done[b]:
            for k in range(K):
                if scores[b, k] > float("-inf"):
                    hyp = prefixes[b * K + k]
                    finished[b].append((float(scores[b, k]) / gnmt_length_penalty(len(hyp), alpha), hyp))
    best = [max(f, key=lambda h: h[0])[1] for f in finished]
    out = torch.full((B, max(len(h) for h in best)), special.pad, dtype=torch.long, device=device)
    for b, hyp in enumerate(best):
        out[b, : len(hyp)] = torch.tensor(hyp, dtype=torch.long)
    return out


def _reorder(caches: list[tuple[KVCache, KVCache]], rows: torch.Tensor) -> None:
    """Follow the surviving beams: the self-attention cache rows move with their beam. Cross-attention
    keys/values come from the memory, identical for every beam of a source, so they stay as they are."""
    for self_cache, _ in caches:
        self_cache.k, self_cache.v = self_cache.k[rows], self_cache.v[rows]


# ----------------------------------------------------------------------------------------------- sizes
def _seq2seq(config: dict, **kwargs) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(**{**config, **kwargs})


@register_model(family="text")
def transformer_tiny(**kw) -> Seq2SeqTransformer:
    """128 wide, 3 + 3 blocks: trains on a CPU in minutes (the embedded numbers/dates task)."""
    return _seq2seq(dict(dim=128, enc_depth=3, dec_depth=3, num_heads=4), **kw)


@register_model(family="text")
def transformer_small(**kw) -> Seq2SeqTransformer:
    return _seq2seq(dict(dim=256, enc_depth=4, dec_depth=4, num_heads=4), **kw)


@register_model(family="text")
def transformer_base(**kw) -> Seq2SeqTransformer:
    """Vaswani et al.'s base model: d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, dropout 0.1."""
    return _seq2seq(dict(dim=512, enc_depth=6, dec_depth=6, num_heads=8), **kw)


@register_model(family="text")
def transformer_big(**kw) -> Seq2SeqTransformer:
    """Vaswani et al.'s big model: d_model 1024, 6 + 6 layers, 16 heads, d_ff 4096, dropout 0.3."""
    return _seq2seq(dict(dim=1024, enc_depth=6, dec_depth=6, num_heads=16, dropout=0.3), **kw)
