"""Every speed-up keeps the plain path's results: class-token-only last block, fused AdamW, compile without
graph breaks."""
import pytest
import torch

import vitkit
from vitkit.nn import Attention, EncoderBlock, capture_attention
from vitkit.tasks.optim import build_adamw


@pytest.mark.parametrize("name,kw", [
    ("vit_tiny_patch4_32", {"depth": 3}),
    ("vit_small_patch16_reg4_224", {"img_size": 32, "depth": 2}),  # register tokens, no_embed_class
    ("deit_tiny_patch16_224", {"img_size": 32, "depth": 2, "init_values": 0.1}),  # LayerScale
])
def test_class_token_only_last_block_gives_the_full_logits_and_gradients(name, kw):
    torch.manual_seed(0)
    model = vitkit.create_model(name, num_classes=5, **kw)
    x = torch.randn(2, 3, *model.img_size)
    fast = model(x)
    fast.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = model.forward_head(model.forward_features(x))
    full.square().sum().backward()
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-4, msg=n)


def test_class_token_only_with_grad_checkpointing_and_capture():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_nano_patch4_32", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    ref = model.forward_head(model.forward_features(x))
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    with capture_attention(model) as maps:  # the last layer's whole map is wanted: the shortcut steps aside
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert maps[-1].attn_weights.shape[-2:] == (65, 65)


def test_attention_num_queries_is_the_first_rows_of_full_attention():
    torch.manual_seed(0)
    block = EncoderBlock(32, 4, init_values=0.5).eval()
    x = torch.randn(2, 9, 32)
    mask = torch.rand(2, 1, 9, 9) > 0.3
    mask[..., 0] = True  # every query may attend somewhere
    torch.testing.assert_close(block(x, num_queries=3), block(x)[:, :3], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(block(x, attn_mask=mask, num_queries=2), block(x, attn_mask=mask)[:, :2],
                               atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="num_queries"):
        Attention(32, 4, cross=True)(x, context=x, num_queries=1)


def test_fused_adamw_steps_like_the_plain_one():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_nano_patch4_32", num_classes=3, depth=2)
    twin = vitkit.create_model("vit_nano_patch4_32", num_classes=3, depth=2)
    twin.load_state_dict(model.state_dict())
    fused = build_adamw(model, lr=1e-2, weight_decay=0.05)
    plain = build_adamw(twin, lr=1e-2, weight_decay=0.05)
    for g in plain.param_groups:
        g["fused"], g["foreach"] = False, False
    assert fused.param_groups[0]["fused"] is True
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    for m, opt in ((model, fused), (twin, plain)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    for (n, a), b, a0 in zip(model.named_parameters(), twin.parameters(), before):
        torch.testing.assert_close(a - a0, b - a0, atol=1e-6, rtol=1e-4, msg=n)
    assert sum((a - a0).abs().sum() for a, a0 in zip(model.parameters(), before)) > 1.0  # it did step


def test_encoder_compiles_without_graph_breaks():
    model = vitkit.create_model("vit_nano_patch4_32", num_classes=3, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    for fn in (model, model.forward_features):
        explanation = torch._dynamo.explain(fn)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


def test_sdpa_backend_order_keeps_outputs_and_is_checked():
    from vitkit.nn import set_sdpa_backends

    torch.manual_seed(0)
    model = vitkit.create_model("vit_nano_patch4_32", num_classes=3, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    try:
        set_sdpa_backends(["cudnn", "flash", "efficient", "math"])  # CPU: cuDNN unavailable, falls through
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        set_sdpa_backends(["math"])
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="expected a non-empty list"):
            set_sdpa_backends(["fast"])
    finally:
        set_sdpa_backends(None)


def test_patch_dropout_keeps_prefix_tokens_and_only_acts_in_training():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_nano_patch4_32", num_classes=3, depth=2, patch_drop_rate=0.5, reg_tokens=2)
    x = torch.randn(2, 3, 32, 32)
    assert model.train().forward_features(x).shape == (2, 3 + 32, 128)  # 3 prefix + half of 64 patches
    assert model.eval().forward_features(x).shape == (2, 3 + 64, 128)
    tokens = model._pos_embed(model.patch_embed(x))
    kept = model.train()._drop_patches(tokens)
    torch.testing.assert_close(kept[:, :3], tokens[:, :3])  # class + registers kept, in place
    patches = tokens[:, 3:]
    for b in range(2):  # every kept token is one of that image's own patch tokens
        assert all((patches[b] == t).all(-1).any() for t in kept[b, 3:])
    with pytest.raises(ValueError, match="patch_drop_rate"):
        vitkit.create_model("vit_nano_patch4_32", patch_drop_rate=1.0)
