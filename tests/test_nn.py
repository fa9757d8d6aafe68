"""Invariants of the shared transformer core (vitkit.nn): attention against a hand-written reference,
capture of attention weights, causality, KV-cache decoding, masks, DropPath/LayerScale and embeddings."""
from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from vitkit.nn import (
    Attention,
    DecoderBlock,
    DropPath,
    EncoderBlock,
    KVCache,
    LayerScale,
    PatchEmbed,
    StaticKVCache,
    capture_attention,
    padding_mask,
    resample_pos_embed,
    sincos_2d_pos_embed,
)

B, N, DIM, HEADS = 2, 7, 32, 4


# --------------------------------------------------------------------------- reference attention
def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape  # (B, N, C) -> (B, heads, N, C/heads)
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _reference(q, k, v, proj: nn.Linear, mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, then the output projection; q, k, v are (B, heads, N, d)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.softmax(scores, dim=-1) @ v
    b, h, n, d = out.shape
    return proj(out.transpose(1, 2).reshape(b, n, h * d))


def reference_self_attention(attn: Attention, x: torch.Tensor, mask=None) -> torch.Tensor:
    q, k, v = (_split_heads(t, attn.num_heads) for t in attn.qkv(x).chunk(3, dim=-1))
    return _reference(q, k, v, attn.proj, mask)


def reference_cross_attention(attn: Attention, x: torch.Tensor, memory: torch.Tensor, mask=None) -> torch.Tensor:
    q = _split_heads(attn.q(x), attn.num_heads)
    k, v = (_split_heads(t, attn.num_heads) for t in attn.kv(memory).chunk(2, dim=-1))
    return _reference(q, k, v, attn.proj, mask)


def _bool_mask(n_query: int, n_key: int) -> torch.Tensor:
    """Random (B, 1, Nq, Nk) boolean mask with at least one allowed key per query row."""
    mask = torch.rand(B, 1, n_query, n_key) > 0.5
    mask[..., 0] = True
    return mask


def _mask(kind: str, n_query: int, n_key: int):
    if kind == "none":
        return None
    if kind == "bool":
        return _bool_mask(n_query, n_key)
    return torch.randn(B, HEADS, n_query, n_key, dtype=torch.float64) * 2.0  # additive float mask


# --------------------------------------------------------------------------- attention == reference
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_self_attention_matches_hand_written_reference(mask_kind):
    attn = Attention(DIM, HEADS).double().eval()
    x = torch.randn(B, N, DIM, dtype=torch.float64)
    mask = _mask(mask_kind, N, N)
    with torch.no_grad():
        expected = reference_self_attention(attn, x, mask)
        torch.testing.assert_close(attn(x, attn_mask=mask), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_cross_attention_to_memory_of_other_width_matches_reference(mask_kind):
    M, mem_dim = 5, 24
    attn = Attention(DIM, HEADS, cross=True, kv_dim=mem_dim).double().eval()
    x, memory = torch.randn(B, N, DIM, dtype=torch.float64), torch.randn(B, M, mem_dim, dtype=torch.float64)
    mask = _mask(mask_kind, N, M)
    with torch.no_grad():
        out = attn(x, memory, attn_mask=mask)
        torch.testing.assert_close(out, reference_cross_attention(attn, x, memory, mask), atol=1e-10, rtol=1e-10)
    assert out.shape == (B, N, DIM)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_causal_combined_with_a_mask_matches_reference(mask_kind):
    attn = Attention(DIM, HEADS).double().eval()
    x = torch.randn(B, N, DIM, dtype=torch.float64)
    mask = _mask(mask_kind, N, N)
    tril = torch.ones(N, N, dtype=torch.bool).tril()
    combined = mask & tril if mask.dtype == torch.bool else mask.masked_fill(~tril, float("-inf"))
    with torch.no_grad():
        expected = reference_self_attention(attn, x, combined)
        torch.testing.assert_close(attn(x, attn_mask=mask, is_causal=True), expected, atol=1e-10, rtol=1e-10)
        with capture_attention(attn):
            torch.testing.assert_close(attn(x, attn_mask=mask, is_causal=True), expected, atol=1e-10, rtol=1e-10)


def test_cross_attention_without_memory_names_the_missing_context():
    attn = Attention(DIM, HEADS, cross=True)
    with pytest.raises(ValueError, match="context"):
        attn(torch.randn(B, N, DIM))


def test_attention_dim_not_divisible_by_heads_names_both_numbers():
    with pytest.raises(ValueError) as err:
        Attention(30, num_heads=4)
    assert "dim=30" in str(err.value) and "num_heads=4" in str(err.value)


# --------------------------------------------------------------------------- capture of attention weights
class _Stack(nn.Module):
    """Two encoder blocks then one decoder block cross-attending a memory (3 self + 1 cross attention)."""

    def __init__(self, mem_dim: int = 24) -> None:
        super().__init__()
        self.enc = nn.ModuleList(EncoderBlock(DIM, HEADS) for _ in range(2))
        self.dec = DecoderBlock(DIM, HEADS, memory_dim=mem_dim)

    def forward(self, x, memory, attn_mask=None, memory_mask=None):
        for blk in self.enc:
            x = blk(x, attn_mask=attn_mask)
        return self.dec(x, memory, attn_mask=attn_mask, memory_mask=memory_mask)


def test_capture_gives_fused_output_and_row_stochastic_weights():
    M = 5
    model = _Stack().eval()
    x, memory = torch.randn(B, N, DIM), torch.randn(B, M, 24)
    mask, memory_mask = _bool_mask(N, N), padding_mask(torch.tensor([[False] * M, [False] * 3 + [True] * 2]))
    with torch.no_grad():
        fused = model(x, memory, mask, memory_mask)
        with capture_attention(model) as attns:
            captured = model(x, memory, mask, memory_mask)
        torch.testing.assert_close(captured, fused, atol=1e-5, rtol=1e-5)

    assert len(attns) == 4
    *self_attns, cross = attns
    for a in self_attns:
        assert a.attn_weights.shape == (B, HEADS, N, N)
        assert torch.all(a.attn_weights[~mask.expand(B, HEADS, N, N)] == 0)  # masked keys get no weight
    assert cross.attn_weights.shape == (B, HEADS, N, M)
    assert torch.all(cross.attn_weights[1, :, :, 3:] == 0)  # padded memory keys get no weight
    for a in attns:
        torch.testing.assert_close(a.attn_weights.sum(-1), torch.ones(a.attn_weights.shape[:-1]))

    # after the context: fast path again, weights of later calls are no longer kept
    kept = [a.attn_weights for a in attns]
    with torch.no_grad():
        model(torch.randn(B, N, DIM), memory)
    assert all(a.capture is False for a in attns)
    assert all(a.attn_weights is w for a, w in zip(attns, kept))


def test_capture_is_switched_off_even_when_the_forward_raises():
    model = _Stack()
    with pytest.raises(RuntimeError), capture_attention(model):
        model(torch.randn(B, N, DIM), torch.randn(B, 5, 7))  # memory of the wrong width
    assert not any(m.capture for m in model.modules() if isinstance(m, Attention))


# --------------------------------------------------------------------------- causality
@pytest.mark.parametrize("capture", [False, True], ids=["fused", "capture"])
def test_causal_encoder_never_looks_at_future_tokens(capture):
    blocks = nn.Sequential(*(EncoderBlock(DIM, HEADS) for _ in range(2))).eval()

    def run(x):
        for blk in blocks:
            x = blk(x, is_causal=True)
        return x

    x = torch.randn(B, N, DIM)
    t = 4
    x_changed = x.clone()
    x_changed[:, t:] = torch.randn(B, N - t, DIM)
    with torch.no_grad():
        if capture:
            with capture_attention(blocks) as attns:
                out, out_changed = run(x), run(x_changed)
            future = ~torch.ones(N, N, dtype=torch.bool).tril()
            assert all(torch.all(a.attn_weights[..., future] == 0) for a in attns)
        else:
            out, out_changed = run(x), run(x_changed)
    torch.testing.assert_close(out[:, :t], out_changed[:, :t], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[:, t:], out_changed[:, t:], atol=1e-3)  # the changed positions do see it


# --------------------------------------------------------------------------- KV cache decoding
@pytest.mark.parametrize(("step", "capture"), [(1, False), (2, False), (3, False), (1, True)])
def test_kv_cache_decoding_equals_full_causal_forward(step, capture):
    T, M, mem_dim = 7, 5, 24
    blocks = nn.ModuleList(DecoderBlock(DIM, HEADS, memory_dim=mem_dim, qk_norm=True) for _ in range(2)).eval()
    x, memory = torch.randn(B, T, DIM), torch.randn(B, M, mem_dim)
    memory_mask = padding_mask(torch.tensor([[False] * M, [False] * 4 + [True]]))

    def run(h, caches=None):
        for i, blk in enumerate(blocks):
            h = blk(h, memory, memory_mask=memory_mask, is_causal=True, cache=None if caches is None else caches[i])
        return h

    with torch.no_grad():
        full = run(x)
        caches = [(KVCache(), KVCache()) for _ in blocks]
        memory_projections = []
        blocks[0].cross_attn.kv.register_forward_hook(lambda *_: memory_projections.append(1))
        with capture_attention(blocks) if capture else nullcontext():
            steps = torch.cat([run(chunk, caches) for chunk in x.split(step, dim=1)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    assert all(self_c.length == T and cross_c.length == M for self_c, cross_c in caches)
    assert len(memory_projections) == 1  # the memory's keys/values are computed once, then reused


def test_static_cache_decoding_with_a_tensor_position_equals_the_growing_cache():
    """What an exported decoder step runs: fixed max_len slots written at a 0-d tensor position, later slots masked
    (filled with garbage here: they must not matter), cross-attention keys given up front."""
    T, M, max_len, mem_dim = 6, 5, 9, 24
    blocks = nn.ModuleList(DecoderBlock(DIM, HEADS, memory_dim=mem_dim) for _ in range(2)).eval()
    x, memory = torch.randn(B, T, DIM), torch.randn(B, M, mem_dim)
    head_dim = DIM // HEADS
    with torch.no_grad():
        grown = [(KVCache(), KVCache()) for _ in blocks]
        want = []
        for t in range(T):
            h = x[:, t:t + 1]
            for blk, cache in zip(blocks, grown):
                h = blk(h, memory, is_causal=True, cache=cache)
            want.append(h)
        static = [[torch.randn(B, HEADS, max_len, head_dim) * 100 for _ in range(2)] for _ in blocks]
        cross = [blk.cross_attn.memory_kv(memory) for blk in blocks]
        got = []
        for t in range(T):
            h, pos = x[:, t:t + 1], torch.tensor(t)
            for i, blk in enumerate(blocks):
                cache = (StaticKVCache(*static[i], pos), KVCache(*cross[i]))
                h = blk(h, None, is_causal=True, cache=cache)
                static[i] = [cache[0].k, cache[0].v]
            got.append(h)
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one token"):
        blocks[0](x[:, :2], memory, is_causal=True, cache=(StaticKVCache(*static[0], torch.tensor(0)), KVCache()))


# --------------------------------------------------------------------------- padding masks
def test_padded_memory_keys_do_not_influence_cross_attention():
    M, mem_dim = 6, 24
    block = DecoderBlock(DIM, HEADS, memory_dim=mem_dim).eval()
    x, memory = torch.randn(B, N, DIM), torch.randn(B, M, mem_dim)
    is_pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 5 + [True]])
    changed = memory.clone()
    changed[is_pad] = torch.randn(int(is_pad.sum()), mem_dim) * 10
    with torch.no_grad():
        out = block(x, memory, memory_mask=padding_mask(is_pad))
        out_changed = block(x, changed, memory_mask=padding_mask(is_pad))
        out_unmasked = block(x, changed)
    torch.testing.assert_close(out, out_changed, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out, out_unmasked, atol=1e-3)  # without the mask the padding does matter


def test_padded_tokens_do_not_influence_real_tokens_in_self_attention():
    block = EncoderBlock(DIM, HEADS).eval()
    x = torch.randn(B, N, DIM)
    is_pad = torch.zeros(B, N, dtype=torch.bool)
    is_pad[0, 5:] = True
    changed = x.clone()
    changed[is_pad] = torch.randn(int(is_pad.sum()), DIM)
    with torch.no_grad():
        out, out_changed = (block(t, attn_mask=padding_mask(is_pad)) for t in (x, changed))
    torch.testing.assert_close(out[~is_pad], out_changed[~is_pad], atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- DropPath, LayerScale
def test_drop_path_is_identity_in_eval():
    drop = DropPath(0.5).eval()
    x = torch.randn(8, 3, 4)
    assert torch.equal(drop(x), x)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    p, n = 0.3, 20000
    drop = DropPath(p).train()
    out = drop(torch.ones(n, 3, 4))
    kept = out.flatten(1)
    per_sample = kept[:, :1]
    assert torch.all(kept == per_sample)  # each sample is dropped or kept as a whole
    torch.testing.assert_close(per_sample[per_sample != 0], torch.full_like(per_sample[per_sample != 0], 1 / (1 - p)))
    assert (per_sample == 0).float().mean().item() == pytest.approx(p, abs=0.02)
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)  # rescaling keeps E[out] = x


def test_drop_path_with_probability_one_drops_everything_without_nan():
    out = DropPath(1.0).train()(torch.ones(4, 3))
    assert torch.equal(out, torch.zeros(4, 3))


def test_layer_scale_starts_at_init_value():
    ls = LayerScale(DIM, init_values=0.1)
    x = torch.randn(B, N, DIM)
    assert torch.all(ls.gamma == 0.1)
    torch.testing.assert_close(ls(x), 0.1 * x)
    block = EncoderBlock(DIM, HEADS, init_values=1e-4)
    assert torch.all(block.ls1.gamma == 1e-4) and torch.all(block.ls2.gamma == 1e-4)


# --------------------------------------------------------------------------- PatchEmbed
def test_patch_embed_tokens_are_row_major_patches():
    p, (H, W) = 8, (16, 24)
    embed = PatchEmbed((H, W), p, in_chans=3, embed_dim=DIM)
    x = torch.randn(B, 3, H, W)
    tokens = embed(x)
    assert tokens.shape == (B, (H // p) * (W // p), DIM) and embed.grid_size == (2, 3)
    w, b = embed.proj.weight, embed.proj.bias  # (dim, 3, p, p)
    for r in range(2):
        for c in range(3):
            patch = x[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p]
            expected = torch.einsum("bchw,dchw->bd", patch, w) + b
            torch.testing.assert_close(tokens[:, r * 3 + c], expected, atol=1e-5, rtol=1e-5)


def test_patch_embed_rejects_img_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError) as err:
        PatchEmbed(img_size=30, patch_size=16)
    msg = str(err.value)
    assert "img_size" in msg and "patch_size" in msg and "30" in msg and "16" in msg


def test_patch_embed_rejects_input_of_wrong_size_naming_the_expected_one():
    embed = PatchEmbed(img_size=32, patch_size=8, embed_dim=DIM)
    with pytest.raises(ValueError) as err:
        embed(torch.randn(1, 3, 48, 48))
    assert "32, 32" in str(err.value) and "48" in str(err.value)


# --------------------------------------------------------------------------- position embeddings
def test_sincos_pos_embed_shape_range_and_distinct_positions():
    pe = sincos_2d_pos_embed(64, (3, 5))
    assert pe.shape == (15, 64) and pe.dtype == torch.float32
    assert pe.abs().max() <= 1.0
    assert torch.cdist(pe, pe).add(torch.eye(15) * 1e3).min() > 1e-2  # no two positions share an embedding
    square = sincos_2d_pos_embed(32, (4, 4))
    assert not torch.allclose(square[1], square[4])  # (y=0, x=1) differs from its transpose (y=1, x=0)
    q = 64 // 4  # position (0, 0): sin = 0, cos = 1 in every frequency
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * q + [1.0] * q + [0.0] * q + [1.0] * q))


def test_sincos_pos_embed_rejects_dim_not_divisible_by_4():
    with pytest.raises(ValueError, match="30"):
        sincos_2d_pos_embed(30, (2, 2))


def test_resample_pos_embed_same_grid_is_exact():
    pe = torch.randn(1, 1 + 16, DIM)
    assert torch.equal(resample_pos_embed(pe, (4, 4), num_prefix_tokens=1), pe)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_resample_pos_embed_keeps_prefix_tokens_exactly(prefix):
    pe = torch.randn(1, prefix + 16, DIM)
    out = resample_pos_embed(pe, (6, 6), num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + 36, DIM)
    assert torch.equal(out[:, :prefix], pe[:, :prefix])


@pytest.mark.parametrize("new_grid", [(8, 8), (2, 2), (3, 7)])
def test_resample_pos_embed_keeps_a_constant_embedding_constant(new_grid):
    pe = torch.cat([torch.zeros(1, 1, DIM), torch.full((1, 16, DIM), 0.7)], dim=1)
    out = resample_pos_embed(pe, new_grid, num_prefix_tokens=1)
    torch.testing.assert_close(out[:, 1:], torch.full((1, new_grid[0] * new_grid[1], DIM), 0.7))


def test_resample_pos_embed_non_square_keeps_rows_and_columns_apart():
    old, new = (2, 3), (4, 6)
    cols = torch.arange(3, dtype=torch.float32).repeat(2)  # value depends on the column only
    pe = torch.cat([torch.zeros(1, 1, DIM), cols[None, :, None].expand(1, 6, DIM)], dim=1)
    out = resample_pos_embed(pe, new, old_grid=old, num_prefix_tokens=1)[0, 1:, 0].reshape(new)
    torch.testing.assert_close(out, out[:1].expand(new))  # still constant down each column
    assert torch.all(out[0, 1:] >= out[0, :-1]) and out[0, -1] > out[0, 0]  # still increasing left to right


def test_resample_pos_embed_non_square_needs_old_grid():
    pe = torch.randn(1, 1 + 6, DIM)
    with pytest.raises(ValueError, match="old_grid"):
        resample_pos_embed(pe, (4, 6), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="old_grid"):
        resample_pos_embed(pe, (4, 6), old_grid=(2, 2), num_prefix_tokens=1)
