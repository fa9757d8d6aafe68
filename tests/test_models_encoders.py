"""One encoder builder for every composite model: registered vitkit names, "vit" and timm encoders under the
segmenter, the DETR-style detector, YOLOS and the captioner."""
from __future__ import annotations

import pytest
import torch

from vitkit.models import create_model
from vitkit.models.captioner import CaptionTransformer
from vitkit.models.encoders import build_encoder
from vitkit.models.segmenter import build_segmenter

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.mark.parametrize("name, kwargs", [("vit_nano_patch4_32", {"patch_size": 8, **TINY}),
                                          ("vit", {"patch_size": 8, **TINY}),
                                          ("timm:vit_tiny_patch16_224", {"patch_size": 8, **TINY})])
def test_build_encoder_gives_every_token_and_the_attributes_heads_read(name, kwargs):
    enc = build_encoder(name, 32, **kwargs)
    tokens = enc.forward_features(torch.randn(2, 3, 32, 32))
    assert tuple(enc.patch_embed.grid_size) == (4, 4) and enc.embed_dim == 32
    assert tokens.shape == (2, enc.num_prefix_tokens + 16, 32)


@pytest.mark.parametrize("model", ["detr_vit_nano_patch8_64", "yolos_nano_patch8_64"])
@pytest.mark.parametrize("encoder", ["vit_nano_patch4_32", "timm:vit_tiny_patch16_224"])
def test_detectors_take_a_registered_or_a_timm_encoder_and_train(model, encoder):
    torch.manual_seed(0)
    det = create_model(model, num_classes=3, img_size=32, encoder=encoder, encoder_kwargs={"patch_size": 8, **TINY})
    assert det.encoder.embed_dim == 32 and tuple(det.encoder.patch_embed.grid_size) == (4, 4)
    out = det(torch.randn(2, 3, 32, 32))
    assert out["pred_logits"].shape[-1] == 4 and out["pred_boxes"].shape[-1] == 4
    out["pred_logits"].sum().backward()
    assert next(det.encoder.parameters()).grad is not None, "the chosen encoder is the one trained"


def test_a_detector_given_an_encoder_and_its_own_vit_sizes_is_an_error_not_a_silent_choice():
    from vitkit.models.detr import DetrViT
    from vitkit.models.yolos import YOLOS

    with pytest.raises(ValueError, match=r"DetrViT: \['embed_dim'\] given with encoder='vit_nano_patch4_32'"):
        DetrViT(num_classes=3, img_size=32, embed_dim=64, encoder="vit_nano_patch4_32")
    with pytest.raises(ValueError, match=r"YOLOS: encoder_kwargs=.* without an encoder name"):
        YOLOS(num_classes=3, img_size=32, encoder_kwargs={"depth": 1})


def test_segmenter_and_captioner_share_the_builder_and_a_timm_encoder_works_under_both():
    seg = build_segmenter("timm:vit_tiny_patch16_224", 3, 32, head="linear", encoder_kwargs={"patch_size": 8, **TINY})
    assert seg(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    cap = CaptionTransformer(40, "timm:vit_tiny_patch16_224", img_size=32, encoder_kwargs={"patch_size": 8, **TINY},
                             dim=32, depth=1, num_heads=2)
    assert cap(torch.randn(2, 3, 32, 32), torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 40)
