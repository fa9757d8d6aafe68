"""Models: every registered config on a tiny CPU variant, parity with timm, position-embedding
resampling, config errors, optimiser conventions and gradient checkpointing."""
from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

import vitkit
from vitkit.errors import CheckpointError
from vitkit.nn import resample_pos_embed, sincos_2d_pos_embed

NUM_CLASSES = 5


def _patch_size(name: str) -> int:
    return int(re.search(r"patch(\d+)", name).group(1))


def _tiny(name: str, **kwargs) -> vitkit.VisionTransformer:
    """A registered config cut down for CPU tests: 2 blocks, a 2x2 (or 4x4 for 4-px patches) patch grid."""
    p = _patch_size(name)
    img_size = 4 * p if p < 16 else 2 * p
    return vitkit.create_model(name, **{"depth": 2, "img_size": img_size, "num_classes": NUM_CLASSES, **kwargs})


def _images(model, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *model.img_size)


# --------------------------------------------------------------------------- the whole registry
@pytest.mark.parametrize("name", vitkit.list_models())
def test_registered_model_tiny_variant(name):
    model = _tiny(name)
    x = _images(model)

    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()

    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"{name}: no gradient reaches {no_grad}"

    model.eval()
    torch._dynamo.reset()  # each model is a new `self`; don't run into the recompile limit
    compiled = torch.compile(model.forward_features, backend="aot_eager", fullgraph=True)  # fullgraph: no breaks
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model.forward_features(x), atol=1e-5, rtol=1e-5)


def test_inductor_compiled_model_matches_eager():
    model = _tiny("vit_nano_patch4_32").eval()
    x = _images(model)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


def test_registry_has_the_timm_names_and_filters_by_pattern():
    names = vitkit.list_models()
    timm_names = {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch32_224", "vit_base_patch32_224"}
    assert timm_names <= set(names) and timm_names <= set(timm.list_models("vit_*"))
    assert names == sorted(names)
    assert vitkit.list_models("deit_*") == [n for n in names if n.startswith("deit_")] != []


# --------------------------------------------------------------------------- parity with timm
TIMM_CONFIGS = {
    "tiny16-224": ("vit_tiny_patch16_224", dict(depth=2)),
    "small32-96": ("vit_small_patch32_224", dict(depth=2, img_size=96)),
    "base32-64": ("vit_base_patch32_224", dict(depth=1, img_size=64)),
    "deit-small-48x80": ("deit_small_patch16_224", dict(depth=2, img_size=(48, 80))),
    "avg-no-cls": ("vit_tiny_patch16_224", dict(depth=2, img_size=64, global_pool="avg", class_token=False)),
    "reg4": ("vit_small_patch16_224", dict(depth=2, img_size=64, reg_tokens=4, no_embed_class=True)),
    "qk-norm": ("vit_tiny_patch16_224", dict(depth=2, img_size=64, qk_norm=True)),
    "layer-scale": ("vit_tiny_patch16_224", dict(depth=2, img_size=64, init_values=1e-5)),
}


@pytest.mark.parametrize("config", TIMM_CONFIGS.values(), ids=TIMM_CONFIGS.keys())
def test_timm_state_dict_loads_strictly_and_gives_the_same_logits(config):
    name, kwargs = config
    reference = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs).eval()
    with torch.no_grad():  # move every weight off its init (zero biases, unit norms, 1e-5 layer scales)
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = vitkit.create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()
    model.load_state_dict(reference.state_dict(), strict=True)

    x = _images(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- position-embedding resampling
def _resampled_state_dict(source, target) -> dict:
    state = dict(source.state_dict())
    state["pos_embed"] = resample_pos_embed(
        state["pos_embed"], target.patch_embed.grid_size, num_prefix_tokens=source.num_prefix_tokens
    )
    return state


def test_pos_embed_resampled_to_the_same_grid_keeps_outputs_exactly():
    source = _tiny("vit_nano_patch4_32").eval()
    target = _tiny("vit_nano_patch4_32").eval()
    target.load_state_dict(_resampled_state_dict(source, target), strict=True)
    x = _images(source)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_32px_weights_load_into_a_48px_model_and_train():
    source = vitkit.create_model("vit_nano_patch4_32", depth=2, num_classes=NUM_CLASSES)
    model = vitkit.create_model("vit_nano_patch4_32", depth=2, img_size=48, num_classes=NUM_CLASSES)
    model.load_state_dict(_resampled_state_dict(source, model), strict=True)
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 128)
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])  # class position carried over

    x, y = torch.randn(8, 3, 48, 48), torch.arange(8) % NUM_CLASSES
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))  # no NaN
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- bad configs
def test_img_size_not_divisible_by_patch_size_names_both():
    with pytest.raises(ValueError) as err:
        vitkit.create_model("vit_nano_patch4_32", img_size=30)
    msg = str(err.value)
    assert "img_size" in msg and "patch_size" in msg and re.search(r"\b30\b", msg) and re.search(r"\b4\b", msg)


def test_unknown_model_name_suggests_a_close_match():
    with pytest.raises(ValueError) as err:
        vitkit.create_model("vit_smal_patch16_224")
    assert "vit_smal_patch16_224" in str(err.value) and "vit_small_patch16_224" in str(err.value)


def test_token_pooling_without_class_token_is_rejected():
    with pytest.raises(ValueError) as err:
        vitkit.create_model("vit_nano_patch4_32", global_pool="token", class_token=False)
    assert "class_token" in str(err.value) and "global_pool" in str(err.value)


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="max"):
        vitkit.create_model("vit_nano_patch4_32", global_pool="max")


def test_image_of_the_wrong_size_names_the_model_size():
    model = _tiny("vit_nano_patch4_32")  # 16 px
    with pytest.raises(ValueError, match="16, 16"):
        model(torch.randn(1, 3, 32, 32))


def test_sincos_pos_embed_is_fixed_and_headless_model_returns_features():
    model = _tiny("vit_nano_patch4_32", pos_embed="sincos", num_classes=0)
    expected = sincos_2d_pos_embed(128, model.patch_embed.grid_size)
    assert not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0, 1:], expected) and torch.equal(model.pos_embed[0, :1], torch.zeros(1, 128))

    features = model(_images(model))
    assert features.shape == (2, 128)  # num_classes=0: pooled features, no head
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    features.square().mean().backward()
    optimizer.step()
    assert torch.equal(model.pos_embed[0, 1:], expected)  # a training step leaves the fixed table alone


# --------------------------------------------------------------------------- optimiser conventions
def test_no_weight_decay_names_are_parameters_and_get_no_decay():
    model = _tiny("vit_small_patch16_reg4_224", depth=1)
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decay_of[id(params[n])] == 0.0 for n in model.no_weight_decay())
    assert decay_of[id(params["blocks.0.attn.qkv.weight"])] == 0.05


def test_layer_decay_scales_learning_rate_down_with_depth():
    depth = 4
    model = _tiny("vit_nano_patch4_32", depth=depth)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())

    def scale(name):
        return scale_of[id(params[name])]

    blocks = [scale(f"blocks.{i}.attn.qkv.weight") for i in range(depth)]
    assert scale("patch_embed.proj.weight") == pytest.approx(0.75 * blocks[0])
    assert scale("pos_embed") == scale("cls_token") == scale("patch_embed.proj.weight")
    assert blocks == pytest.approx([blocks[-1] * 0.75 ** (depth - 1 - i) for i in range(depth)])
    assert blocks[0] < blocks[-1] < scale("head.weight") == 1.0
    assert scale(f"blocks.{depth - 1}.mlp.fc2.weight") == blocks[-1]  # a block is one layer


# --------------------------------------------------------------------------- gradient checkpointing
def test_grad_checkpointing_gives_same_outputs_and_gradients():
    model = _tiny("vit_nano_patch4_32")
    x, y = _images(model, 4), torch.tensor([0, 1, 2, 3])
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # (early-stopping recompute skips post-hooks)

    def run():
        model.zero_grad()
        calls.clear()
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    plain_logits, plain_grads, plain_calls = run()
    model.set_grad_checkpointing(True)
    ckpt_logits, ckpt_grads, ckpt_calls = run()

    assert (plain_calls, ckpt_calls) == (1, 2)  # checkpointing really recomputes the block in backward
    torch.testing.assert_close(ckpt_logits, plain_logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ckpt_grads, plain_grads, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- convolutional stem
def test_conv_stem_keeps_the_token_grid_and_reloads_from_a_saved_file(tmp_path):
    model = vitkit.create_model("vit_nano_patch4_32", depth=2, img_size=32, num_classes=NUM_CLASSES,
                                stem_channels=(8, 16, 32))
    stem_convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in stem_convs] == [1, 2, 2]  # the last log2(4) convs downsample
    assert model.patch_embed.proj.kernel_size == (1, 1)
    x = torch.randn(4, 3, 32, 32)
    assert model.forward_features(x).shape == (4, 1 + 8 * 8, 128)
    model.train()
    model(x)  # BatchNorm running statistics move away from their initial values
    model.eval()
    path = tmp_path / "stem_vit.pth"
    torch.save(model.state_dict(), path)
    loaded = vitkit.create_model("vit_nano_patch4_32", depth=2, img_size=32, num_classes=NUM_CLASSES,
                                 stem_channels=(8, 16, 32), pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    plain = tmp_path / "plain_vit.pth"  # a checkpoint without the stem is refused, naming the setting
    torch.save(vitkit.create_model("vit_nano_patch4_32", depth=2, num_classes=NUM_CLASSES).state_dict(), plain)
    with pytest.raises(CheckpointError, match="stem_channels"):
        vitkit.create_model("vit_nano_patch4_32", depth=2, img_size=32, num_classes=NUM_CLASSES,
                            stem_channels=(8, 16, 32), pretrained=str(plain))


@pytest.mark.parametrize("kwargs, expected", [
    (dict(patch_size=6, img_size=36, stem_channels=(16,)), "power-of-two patch"),
    (dict(stem_channels=(16, 0)), "positive integers"),
])
def test_bad_conv_stem_is_rejected_with_the_setting_named(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        vitkit.create_model("vit_nano_patch4_32", **kwargs)
