"""2-D rotary position embeddings (vitkit.nn.rope) against timm's: the same rotation of queries and keys as timm's
Eva attention applies, at the native and at another (non-square) grid, timm's state-dict keys loading strictly;
and the invariants of RoPE itself (relative positions only, prefix tokens untouched, the compiled path)."""
from __future__ import annotations

import functools

import pytest
import timm
import torch
from timm.layers.pos_embed_sincos import apply_rot_embed_cat

from vitkit.nn.rope import RotaryEmbedding, apply_rope

# timm model -> the RotaryEmbedding arguments that reproduce its `rope` (read from timm/models/eva.py: the
# model's rope_* arguments and what `Eva.__init__` passes to `create_rope_embed`). Besides these, dim=embed_dim,
# num_heads and depth come from the model. EVA-02 is timm's "cat" rope with in_pixels=False (index
# coordinates), temperature 10000, rescaled onto the 224/14 pre-training grid.
TIMM_ROPE_CONFIGS: dict[str, dict] = {
    "eva02_tiny_patch14_224": dict(kind="axial", temperature=10000.0, grid_indexing="ij", ref_grid=(16, 16)),
    "eva02_small_patch14_224": dict(kind="axial", temperature=10000.0, grid_indexing="ij", ref_grid=(16, 16)),
    "eva02_base_patch14_224": dict(kind="axial", temperature=10000.0, grid_indexing="ij", ref_grid=(16, 16)),
    "vit_base_patch16_rope_224": dict(kind="axial", temperature=100.0, grid_indexing="xy"),
    "vit_base_patch16_rope_mixed_224": dict(kind="mixed", temperature=10.0, grid_indexing="xy"),
    "vit_small_patch16_dinov3": dict(kind="dinov3", temperature=100.0, grid_indexing="ij", rotate_half=True),
    "vit_base_patch16_dinov3": dict(kind="dinov3", temperature=100.0, grid_indexing="ij", rotate_half=True),
    # Perception Encoder: a grid offset of 1 and a 24x24 reference grid, with "xy" indexing.
    "vit_pe_core_tiny_patch16_384": dict(kind="axial", temperature=10000.0, grid_indexing="xy", ref_grid=(24, 24),
                                         grid_offset=1.0),
}
DIM, HEADS, DEPTH = 64, 4, 2
HEAD_DIM = DIM // HEADS
OTHER_GRID = (7, 5)  # dynamic image size: not the native grid, not square


@functools.lru_cache(maxsize=None)
def _timm_model(name: str, dynamic: bool, **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                              dynamic_img_size=dynamic, **kw)
    return model.eval()


def _timm_embed(model, grid: tuple[int, int] | None) -> torch.Tensor:
    """What `Eva._pos_embed` hands its blocks: the cached embedding at the native grid, else one for `grid`."""
    return model.rope.get_embed() if grid is None else model.rope.get_embed(shape=grid)


def _timm_rotate(model, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """EvaAttention / AttentionRope: rotate all but the prefix tokens, after q_norm / k_norm."""
    npt, half = model.num_prefix_tokens, model.blocks[0].attn.rotate_half
    return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], emb, half=half)], dim=2).type_as(t)


def _ours(name: str, model=None) -> RotaryEmbedding:
    rope = RotaryEmbedding(DIM, HEADS, depth=DEPTH, **TIMM_ROPE_CONFIGS[name]).eval()
    if model is not None:
        rope.load_state_dict(model.rope.state_dict(), strict=True)  # "mixed": the learned `freqs`
    return rope


@pytest.mark.parametrize("native", [True, False], ids=["native_grid", "grid_7x5"])
@pytest.mark.parametrize("name", list(TIMM_ROPE_CONFIGS))
def test_rotation_matches_timm_eva_attention(name, native):
    model = _timm_model(name, dynamic=not native)
    rope = _ours(name, model)
    grid = tuple(model.patch_embed.grid_size) if native else OTHER_GRID
    timm_emb, emb = _timm_embed(model, None if native else grid), rope(grid)
    npt = model.num_prefix_tokens
    assert npt == (5 if "dinov3" in name else 1)  # class token, + 4 registers for DINOv3
    assert rope.rotate_half == model.blocks[0].attn.rotate_half
    assert emb.dtype == torch.float32
    assert emb.shape == ((DEPTH, HEADS) if rope.per_block else ()) + (grid[0] * grid[1], HEAD_DIM)
    q, k = torch.randn(2, 2, HEADS, npt + grid[0] * grid[1], HEAD_DIM)
    for i in range(DEPTH if rope.per_block else 1):
        t_emb, o_emb = (timm_emb[i], emb[i]) if rope.per_block else (timm_emb, emb)
        for t in (q, k):
            ours = apply_rope(t, o_emb, npt, rope.rotate_half)
            torch.testing.assert_close(ours, _timm_rotate(model, t, t_emb), atol=1e-6, rtol=0)
            assert torch.equal(ours[:, :, :npt], t[:, :, :npt])  # class and register tokens pass unchanged
            assert not torch.allclose(ours[:, :, npt:], t[:, :, npt:])  # and the patches do move


def test_a_wrong_option_is_caught_by_the_comparison():
    """The comparison above can fail: "ij" instead of timm's "xy" rotates differently on a non-square grid."""
    model = _timm_model("vit_base_patch16_rope_224", dynamic=True)
    wrong = RotaryEmbedding(DIM, HEADS, **dict(TIMM_ROPE_CONFIGS["vit_base_patch16_rope_224"], grid_indexing="ij"))
    q = torch.randn(1, HEADS, 1 + 35, HEAD_DIM)
    diff = apply_rope(q, wrong(OTHER_GRID), 1) - _timm_rotate(model, q, _timm_embed(model, OTHER_GRID))
    assert diff.abs().max() > 1e-2


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "vit_base_patch16_rope_mixed_224",
                                  "vit_small_patch16_dinov3"])
def test_state_dict_keys_and_buffers_are_timms(name):
    model = _timm_model(name, dynamic=False)
    rope = _ours(name)
    assert set(rope.state_dict()) == set(model.rope.state_dict()) == ({"freqs"} if rope.per_block else set())
    # Frequencies live in timm's non-persistent buffers ("bands", "periods"), absent from the state dict.
    buffers = {n for n, _ in rope.named_buffers()}
    assert buffers <= {n for n, _ in model.rope.named_buffers()}
    assert buffers == {"axial": {"bands"}, "mixed": set(), "dinov3": {"periods"}}[rope.kind]
    model.rope.load_state_dict(rope.state_dict(), strict=True)  # and back
    timm_nwd = model.rope.no_weight_decay() if hasattr(model.rope, "no_weight_decay") else set()
    assert rope.no_weight_decay() == set(timm_nwd)


@pytest.mark.parametrize("rotate_half", [False, True])
@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "vit_base_patch16_rope_224",
                                  "vit_base_patch16_rope_mixed_224", "vit_small_patch16_dinov3",
                                  "vit_pe_core_tiny_patch16_384"])
def test_rotated_score_depends_only_on_relative_position(name, rotate_half):
    """RoPE's point (Su et al. 2021): q_i . k_j after rotation is a function of p_i - p_j. The same q and k at
    every position of a 4x5 grid: shifting both tokens by one row and one column keeps every score."""
    rope = RotaryEmbedding(DIM, HEADS, depth=DEPTH, **dict(TIMM_ROPE_CONFIGS[name], rotate_half=rotate_half))
    h, w = 4, 5
    emb = rope((h, w))
    emb = emb[-1] if rope.per_block else emb
    q, k = (v.expand(1, HEADS, h * w, HEAD_DIM) for v in torch.randn(2, 1, HEADS, 1, HEAD_DIM))
    scores = apply_rope(q, emb, rotate_half=rotate_half) @ apply_rope(k, emb, rotate_half=rotate_half).transpose(-1, -2)
    s = scores.reshape(HEADS, h, w, h, w)
    torch.testing.assert_close(s[:, :-1, :-1, :-1, :-1], s[:, 1:, 1:, 1:, 1:], atol=1e-5, rtol=1e-5)
    assert (s[:, 0, 0, 0, 0] - s[:, 0, 0, 2, 3]).abs().min() > 1e-4  # positions do matter


@pytest.mark.parametrize("kwargs,needle", [
    (dict(kind="sideways"), r"kind='sideways'.*\['axial', 'mixed', 'dinov3'\]"),
    (dict(num_heads=6), "num_heads=6"),  # 64 / 6
    (dict(num_heads=32), "multiple of 4"),  # head_dim 2: no pair per axis
    (dict(grid_indexing="yx"), "grid_indexing='yx'"),
    (dict(kind="dinov3", ref_grid=(16, 16)), "ref_grid"),
    (dict(kind="mixed", depth=0), "depth=0"),
    (dict(kind="dinov3", rescale_coords=0.5), "rescale_coords=0.5"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RotaryEmbedding(DIM, **dict(dict(num_heads=HEADS), **kwargs))


@pytest.mark.parametrize("rotate_half", [False, True])
def test_prefix_tokens_and_first_rows(rotate_half):
    rope = RotaryEmbedding(DIM, HEADS, kind="axial", rotate_half=rotate_half)
    emb, npt = rope((3, 4)), 5
    x = torch.randn(2, HEADS, npt + 12, HEAD_DIM)
    full = apply_rope(x, emb, npt, rotate_half)
    # Only the class token (or the prefix) queries: nothing to rotate, the same tensor back.
    for rows in (1, npt):
        prefix = x[:, :, :rows]
        assert apply_rope(prefix, emb, npt, rotate_half) is prefix
    # The first queries of the sequence: the first rows of the full rotation.
    torch.testing.assert_close(apply_rope(x[:, :, :npt + 3], emb, npt, rotate_half), full[:, :, :npt + 3],
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="covers 12 positions"):
        apply_rope(torch.randn(2, HEADS, npt + 13, HEAD_DIM), emb, npt, rotate_half)
    # Rotation keeps each token's norm (an orthogonal map per channel pair).
    torch.testing.assert_close(full.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_deterministic_embeddings_are_cached_per_grid():
    rope = RotaryEmbedding(DIM, HEADS, kind="dinov3", rotate_half=True)
    first = rope((4, 6))
    assert rope((4, 6)) is first and rope([4, 6]) is first
    assert rope((6, 4)) is not first and rope((6, 4)).shape == first.shape
    rope.half()  # casting the module must not round the frequencies, nor keep stale entries
    assert rope.periods.dtype == torch.float32 and not rope._cache
    torch.testing.assert_close(rope((4, 6)), first, atol=0, rtol=0)


def test_mixed_frequencies_learn_and_the_cache_follows_them():
    rope = RotaryEmbedding(DIM, HEADS, kind="mixed", depth=DEPTH, temperature=10.0)
    q = torch.randn(2, HEADS, 1 + 12, HEAD_DIM)
    emb = rope((3, 4))
    assert emb.requires_grad and rope((3, 4)) is not emb  # training path: computed each call
    apply_rope(q, emb[1], 1).square().sum().backward()
    assert rope.freqs.grad is not None and rope.freqs.grad[:, 1].abs().sum() > 0
    assert rope.freqs.grad[:, 0].abs().sum() == 0  # block 0's frequencies were not used
    with torch.no_grad():
        cached = rope((3, 4))
        assert rope((3, 4)) is cached and not cached.requires_grad
        rope.freqs.mul_(1.5)  # an optimiser step or a state-dict load changes them in place
        assert not torch.allclose(rope((3, 4)), cached)


def test_a_cache_filled_in_inference_mode_serves_training():
    rope = RotaryEmbedding(DIM, HEADS, kind="axial", ref_grid=(16, 16))
    with torch.inference_mode():
        rope((3, 4))
    q = torch.randn(2, HEADS, 1 + 12, HEAD_DIM, requires_grad=True)
    apply_rope(q, rope((3, 4)), 1).square().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "vit_base_patch16_rope_mixed_224",
                                  "vit_small_patch16_dinov3"])
@pytest.mark.parametrize("rotate_half", [False, True])
def test_compiled_path_matches_the_eager_one(name, rotate_half, monkeypatch):
    """Under torch.compile the embedding is built inline and the rotation done in real arithmetic."""
    rope = RotaryEmbedding(DIM, HEADS, depth=DEPTH, **dict(TIMM_ROPE_CONFIGS[name], rotate_half=rotate_half)).eval()
    n = 4 + 35
    q = torch.randn(2 * HEADS * n * HEAD_DIM + 1)[1:].view(2, HEADS, n, HEAD_DIM)  # odd offset: no complex view
    eager_emb = rope(OTHER_GRID)
    eager = apply_rope(q, eager_emb[-1] if rope.per_block else eager_emb, 4, rotate_half)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    compiled_emb = rope(OTHER_GRID)
    torch.testing.assert_close(compiled_emb, eager_emb, atol=0, rtol=0)
    compiled = apply_rope(q, compiled_emb[-1] if rope.per_block else compiled_emb, 4, rotate_half)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["vit_base_patch16_rope_224", "vit_base_patch16_rope_mixed_224",
                                  "vit_small_patch16_dinov3"])
def test_coordinate_augmentation_trains_like_timm_and_leaves_eval_alone(name):
    """DINOv3's RoPE augmentation (shift, per-axis jitter, shared rescale), as timm's `rope_*_coords`."""
    aug = dict(shift_coords=0.5, jitter_coords=1.5, rescale_coords=2.0)
    model = _timm_model(name, dynamic=True, **{f"rope_{k}": v for k, v in aug.items()})
    rope = RotaryEmbedding(DIM, HEADS, depth=DEPTH, **TIMM_ROPE_CONFIGS[name], **aug).eval()
    plain = _ours(name, model)
    rope.load_state_dict(model.rope.state_dict(), strict=True)
    # Eval: deterministic, the un-augmented embedding.
    assert not rope.augment
    torch.testing.assert_close(rope(OTHER_GRID), plain(OTHER_GRID), atol=0, rtol=0)
    rope.train()
    model.rope.train()
    try:
        assert rope.augment
        torch.manual_seed(3)
        ours = rope(OTHER_GRID)
        torch.manual_seed(3)
        theirs = model.rope.get_embed(shape=OTHER_GRID)
        ours_again = rope(OTHER_GRID)
    finally:
        model.rope.eval()
    assert not torch.allclose(ours, ours_again)  # one draw per call, nothing cached
    q = torch.randn(1, HEADS, model.num_prefix_tokens + 35, HEAD_DIM)
    for i in range(DEPTH if rope.per_block else 1):
        o_emb, t_emb = (ours[i], theirs[i]) if rope.per_block else (ours, theirs)
        torch.testing.assert_close(apply_rope(q, o_emb, model.num_prefix_tokens, rope.rotate_half),
                                   _timm_rotate(model, q, t_emb), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rotate_half", [False, True])
def test_low_precision_queries_keep_their_dtype(rotate_half):
    rope = RotaryEmbedding(DIM, HEADS, kind="axial", temperature=100.0, grid_indexing="xy", rotate_half=rotate_half)
    q = torch.randn(2, HEADS, 1 + 12, HEAD_DIM)
    ref = apply_rope(q, rope((3, 4)), 1, rotate_half)
    out = apply_rope(q.bfloat16(), rope((3, 4)), 1, rotate_half)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=1e-2)
