"""The pretrained families (DINOv2/v3, DeiT III, CLIP, SigLIP, EVA-02, RoPE ViT): each registered name, built
small, loads a timm model of random weights strictly and gives timm's outputs — at the native size, at another
size (positions resampled on load, RoPE recomputed for the new grid) and, where timm allows it, at any size on the
fly (dynamic_img_size). A checkpoint of one family offered to another is refused with a message naming the fix."""
from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.errors import CheckpointError
from vitkit.models.pretrained import load_pretrained

timm = pytest.importorskip("timm")

# Small versions of each family: same options as the registered name, 2 blocks of width 96 (4 heads).
SMALL = dict(embed_dim=96, depth=2, num_heads=4)
FAMILIES = {  # registered name (also timm's) -> native test image size
    "vit_small_patch14_dinov2": 56,
    "vit_small_patch14_reg4_dinov2": 56,
    "vit_giant_patch14_dinov2": 56,
    "deit3_small_patch16_224": 64,
    "vit_base_patch16_clip_224": 64,
    "vit_base_patch16_clip_quickgelu_224": 64,
    "vit_base_patch16_siglip_224": 64,
    "vit_base_patch16_siglip_gap_224": 64,
    "eva02_tiny_patch14_224": 56,
    "eva02_small_patch14_224": 56,
    "eva02_base_patch14_224": 56,
    "vit_base_patch16_rope_224": 64,
    "vit_base_patch16_rope_mixed_224": 64,
    "vit_base_patch16_rope_ape_224": 64,
    "vit_base_patch16_rope_mixed_ape_224": 64,
    "vit_small_patch16_dinov3": 64,
    "vit_small_patch16_dinov3_qkvb": 64,
}
# timm's DINOv3 models hold extra per-size numbers in their builder; the giant DINOv2 doubles its MLP ratio.
TIMM_EXTRA = {"vit_giant_patch14_dinov2": dict(mlp_ratio=2.66667 * 2)}
VITKIT_EXTRA = {"vit_giant_patch14_dinov2": dict(mlp_ratio=2.66667)}


def _timm(name: str, size: int, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, img_size=size, num_classes=10, **SMALL,
                          **{**TIMM_EXTRA.get(name, {}), **kw}).eval()
    with torch.no_grad():  # random, not-small weights everywhere: zero biases / unit norms would hide mistakes
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _vitkit(name: str, size: int, ckpt, **kw):
    return vitkit.create_model(name, pretrained=ckpt, img_size=size, num_classes=10, **SMALL,
                               **{**VITKIT_EXTRA.get(name, {}), **kw}).eval()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_gives_timm_logits_at_native_and_new_size(name, tmp_path):
    size = FAMILIES[name]
    src = _timm(name, size)
    ckpt = tmp_path / "timm.pth"
    torch.save(src.state_dict(), ckpt)
    x = torch.randn(2, 3, size, size)
    model = _vitkit(name, size, ckpt)
    with torch.no_grad():
        ref, out = src(x), model(x)
        assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()
        feats = model.forward_features(x)
        assert (feats - src.forward_features(x)).abs().max() < 1e-5

    # another size: vitkit resamples the positions once on load; timm's dynamic mode resamples on each call
    new = size + 2 * model.patch_size[0]
    dyn = _timm(name, size, dynamic_img_size=True)
    dyn.load_state_dict(src.state_dict())
    bigger = _vitkit(name, new, ckpt)
    xb = torch.randn(2, 3, new, new)
    with torch.no_grad():
        assert (bigger(xb) - dyn(xb)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_base_patch16_rope_224", "vit_small_patch16_dinov3",
                                  "eva02_small_patch14_224"])
def test_dynamic_img_size_matches_timm_on_a_non_square_input(name, tmp_path):
    size = FAMILIES[name]
    src = _timm(name, size, dynamic_img_size=True)
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    model = _vitkit(name, size, tmp_path / "timm.pth", dynamic_img_size=True)
    p = model.patch_size[0]
    x = torch.randn(1, 3, 3 * p, 5 * p)  # a 3x5 grid, neither the native one nor square
    with torch.no_grad():
        assert (model(x) - src(x)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(torch.randn(1, 3, 3 * p + 1, 5 * p))


def test_list_models_shows_the_families():
    assert {"vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "vit_base_patch14_dinov2"} <= set(
        vitkit.list_models("*dinov2*"))
    for name in FAMILIES:
        assert name in vitkit.list_models(), name


# The table: a timm checkpoint offered to a model of another family either gives timm's logits or is refused
# with the option that fits. Each case: (timm model, vitkit model it is offered to, words the message must contain).
REFUSED = [
    ("vit_base_patch16_clip_224", "vit_base_patch16_224", "pre_norm=True"),
    ("vit_base_patch16_siglip_224", "vit_base_patch16_224", "global_pool='map'"),
    ("vit_base_patch16_rope_224", "vit_base_patch16_224", "pos_embed='none'"),
    ("eva02_small_patch14_224", "vit_small_patch16_224", "mlp_layer='swiglu'"),
    ("vit_small_patch14_dinov2", "vit_small_patch16_224", "init_values"),
    ("vit_base_patch16_224", "vit_base_patch16_clip_224", "pre_norm=False"),
    ("vit_small_patch16_dinov3", "vit_base_patch16_rope_224", "register tokens"),
]


@pytest.mark.parametrize("source,target,fix", REFUSED)
def test_a_checkpoint_of_another_family_is_refused_naming_the_fix(source, target, fix, tmp_path):
    size = 112  # a multiple of both patch sizes
    torch.save(_timm(source, size).state_dict(), tmp_path / "src.pth")
    with pytest.raises(CheckpointError) as e:
        _vitkit(target, size, tmp_path / "src.pth")
    assert fix in str(e.value) and "src.pth" in str(e.value)


def test_lenient_load_is_explicit_and_reported(tmp_path):
    torch.save(_timm("vit_base_patch16_clip_224", 64).state_dict(), tmp_path / "clip.pth")
    model = vitkit.create_model("vit_base_patch16_224", img_size=64, num_classes=10, **SMALL)
    report = load_pretrained(model, tmp_path / "clip.pth", strict=False)
    assert not report.ok and "norm_pre.weight" in report.unexpected and "patch_embed.proj.bias" in report.missing


def test_refusal_names_the_registered_model_that_fits(tmp_path):
    """At a real size the message names the registered model whose layout is the checkpoint's."""
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56)
    torch.save(src.state_dict(), tmp_path / "dinov2.pth")
    with pytest.raises(CheckpointError, match="vit_small_patch14_dinov2"):
        vitkit.create_model("vit_small_patch16_224", pretrained=tmp_path / "dinov2.pth", img_size=64)
    model = vitkit.create_model("vit_small_patch14_dinov2", pretrained=tmp_path / "dinov2.pth", img_size=56).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert (model.forward_features(x) - src.eval().forward_features(x)).abs().max() < 1e-5


def test_forward_intermediates_match_timm(tmp_path):
    src = _timm("vit_small_patch14_reg4_dinov2", 56)
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    model = _vitkit("vit_small_patch14_reg4_dinov2", 56, tmp_path / "timm.pth")
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, -1], norm=True, return_prefix_tokens=True)
        t_final, t_inter = src.forward_intermediates(x, indices=[0, -1], norm=True, return_prefix_tokens=True)
        assert (final - t_final).abs().max() < 1e-5
        for (maps, prefix), (t_maps, t_prefix) in zip(inter, t_inter):
            assert maps.shape == (2, 96, 4, 4) and prefix.shape == (2, 5, 96)
            assert (maps - t_maps).abs().max() < 1e-5 and (prefix - t_prefix).abs().max() < 1e-5
        nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True, stop_early=True)
        assert len(nlc) == 1 and nlc[0].shape == (2, 16, 96)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[5])
