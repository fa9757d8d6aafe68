"""The parity table of the pretrained families, redone as a new user would try it: a timm model with random
weights, saved as a state dict, loaded (1) into a plain vitkit ViT of the same sizes and (2) into vitkit's model of
timm's name; each row gives the largest logit difference to timm, or the first line of the refusal.

    python benchmarks/family_parity.py            # ~1 min on 2 CPU cores; prints a Markdown table
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import timm
import torch

import vitkit
from vitkit.errors import CheckpointError

# timm name -> the plain ViT sizes a user would guess for it (patch, width, depth, heads, image size)
ROWS = {
    "vit_small_patch14_dinov2": dict(patch_size=14, embed_dim=384, depth=12, num_heads=6, img_size=518,
                                     init_values=1e-5),
    "vit_small_patch14_reg4_dinov2": dict(patch_size=14, embed_dim=384, depth=12, num_heads=6, img_size=518,
                                          init_values=1e-5, reg_tokens=4),
    "deit3_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, init_values=1e-6,
                                    no_embed_class=True),
    "vit_base_patch16_clip_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch16_siglip_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, class_token=False,
                                        global_pool="avg"),
    "vit_base_patch16_rope_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, init_values=1e-5),
    "eva02_small_patch14_224": dict(patch_size=14, embed_dim=384, depth=12, num_heads=6),
}


def attempt(build, path: Path, x: torch.Tensor, ref: torch.Tensor) -> str:
    try:
        model = build()
        vitkit.models.pretrained.load_pretrained(model, path)  # strict, the default
    except CheckpointError as err:
        return "refused: " + str(err).splitlines()[0][:220]
    with torch.no_grad():
        diff = (model.eval()(x) - ref).abs().max().item()
    return f"same logits (max diff {diff:.1e})" if diff < 1e-4 else f"DIFFERENT logits (max diff {diff:.2f})"


def main() -> None:
    torch.manual_seed(0)
    rows = ["| timm model | into a plain vitkit ViT of the same sizes | into `vitkit.create_model(<timm name>)` |",
            "| --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizes in ROWS.items():
            timm_model = timm.create_model(name, num_classes=10).eval()
            size = timm_model.patch_embed.img_size
            path = Path(tmp) / f"{name}.pth"
            torch.save(timm_model.state_dict(), path)
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                ref = timm_model(x)
            plain = attempt(lambda s=sizes: vitkit.models.VisionTransformer(num_classes=10, **s), path, x, ref)
            named = attempt(lambda n=name, s=size: vitkit.create_model(n, num_classes=10, img_size=s), path, x, ref)
            rows.append(f"| `{name}` | {plain} | {named} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
