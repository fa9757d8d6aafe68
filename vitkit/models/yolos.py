"""YOLOS: detection tokens appended to a plain ViT's patch tokens (Fang et al. 2021, "You Only Look at One
Sequence"), with weight import from Hugging Face `transformers` `YolosForObjectDetection` checkpoints.

    model = vitkit.create_model("yolos_small", num_classes=80, img_size=800)
    report = model.load_pretrained("hustvl-yolos-small/")     # a save_pretrained folder or its weights file
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import CheckpointError
from ..nn import resample_pos_embed
from .encoders import build_encoder, own_sizes_unused
from .heads.detection import Output, PredictionMLP
from .pretrained import load_checkpoint_file, load_pretrained, rename_transformers_vit
from .registry import register_model

log = logging.getLogger("vitkit")

# COCO's 80 category ids among 1..90: YOLOS/DETR checkpoints predict the raw id (92 outputs: 91 + no-object),
# vitkit's COCO data module labels them 0..79 in this order.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


class YOLOS(nn.Module):
    """A ViT encoder whose sequence is [class token, patch tokens, `num_det_tokens` detection tokens]; after
    the final norm, each detection token goes through a class MLP and a box MLP (3 layers each, as DETR).

    Args:
        num_classes: object classes (without "no object").
        img_size: input size (fixed: position embeddings are resampled when weights are loaded, not per call).
        patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate: the ViT encoder.
        pos_embed: the patch tokens' position embedding, "learn" or fixed 2-D "sincos".
        num_det_tokens: detection tokens (detections per image before top-k).
        mid_pos_embed: YOLOS-S/B's extra position embeddings added after every block but the last.
        norm_eps: LayerNorm epsilon (1e-12 in the transformers checkpoints, 1e-6 in timm's ViT).
        encoder: instead of the ViT built from the sizes above, a registered vitkit ViT name or "timm:<name>"
            (`vitkit.models.build_encoder`), with `encoder_kwargs`; the detection tokens join its sequence.
        encoder_kwargs: keyword arguments for that encoder.
    """

    def __init__(
        self,
        num_classes: int = 80,
        img_size: int | tuple[int, int] = 512,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_embed: Literal["learn", "sincos"] = "learn",
        drop_path_rate: float = 0.0,
        num_det_tokens: int = 100,
        mid_pos_embed: bool = False,
        norm_eps: float = 1e-6,
        encoder: str | None = None,
        encoder_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_det_tokens = num_classes, num_det_tokens
        if encoder is None:
            if encoder_kwargs:
                raise ValueError(f"YOLOS: encoder_kwargs={encoder_kwargs} without an encoder name; expected "
                                 f"encoder: <name> (or the ViT sizes as YOLOS's own arguments)")
            self.encoder = build_encoder("vit", img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                         num_heads=num_heads, mlp_ratio=mlp_ratio, pos_embed=pos_embed,
                                         drop_path_rate=drop_path_rate)
            for m in self.encoder.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = norm_eps
        else:
            own_sizes_unused(YOLOS, encoder, dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                                  num_heads=num_heads, mlp_ratio=mlp_ratio, pos_embed=pos_embed,
                                                  drop_path_rate=drop_path_rate, norm_eps=norm_eps))
            self.encoder = build_encoder(encoder, img_size, **(encoder_kwargs or {}))
            missing = [a for a in ("_pos_embed", "blocks", "norm") if not hasattr(self.encoder, a)]
            if missing:
                raise ValueError(f"YOLOS: encoder {encoder!r} has no {missing}; expected a ViT (vitkit or timm)")
        if getattr(self.encoder, "rope", None) is not None:
            raise ValueError(f"YOLOS: encoder {encoder!r} uses rotary position embeddings, which cover only its patch "
                             f"grid, not YOLOS's detection tokens; expected an encoder with learned or sin-cos "
                             f"positions (e.g. vit_small_patch14_dinov2), or a DETR detector (detr_vit_*) for this one")
        embed_dim, depth = self.encoder.embed_dim, len(self.encoder.blocks)
        self.det_token = nn.Parameter(torch.zeros(1, num_det_tokens, embed_dim))
        self.det_pos_embed = nn.Parameter(torch.zeros(1, num_det_tokens, embed_dim))
        seq = self.encoder.num_prefix_tokens + self.encoder.patch_embed.num_patches + num_det_tokens
        self.mid_pos_embed = nn.Parameter(torch.zeros(depth - 1, 1, seq, embed_dim)) if mid_pos_embed else None
        self.class_embed = PredictionMLP(embed_dim, embed_dim, num_classes + 1, 3)
        self.bbox_embed = PredictionMLP(embed_dim, embed_dim, 4, 3)
        for p in (self.det_token, self.det_pos_embed, self.mid_pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.encoder.img_size

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Output:
        """images (B, 3, H, W) -> "pred_logits" (B, det, K+1), "pred_boxes" (B, det, 4) normalised cxcywh.
        `targets` is accepted for a common interface with `DetrViT` and not used."""
        enc = self.encoder
        x = enc.norm_pre(enc._pos_embed(enc.patch_embed(images)))  # (B, 1 + N, D) with positions
        det = (self.det_token + self.det_pos_embed).expand(x.shape[0], -1, -1)
        x = torch.cat([x, det], dim=1)  # (B, 1 + N + det, D)
        for i, block in enumerate(enc.blocks):
            x = block(x)
            if self.mid_pos_embed is not None and i < len(enc.blocks) - 1:
                x = x + self.mid_pos_embed[i]
        x = enc.norm(x)[:, -self.num_det_tokens :]  # (B, det, D)
        return {"pred_logits": self.class_embed(x), "pred_boxes": self.bbox_embed(x).sigmoid(), "aux_outputs": []}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"det_token", "det_pos_embed"}
        return names | ({"mid_pos_embed"} if self.mid_pos_embed is not None else set())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def load_pretrained(self, checkpoint: str | os.PathLike, class_map: list[int] | None = None):
        """Load a transformers `YolosForObjectDetection` checkpoint (folder or weights file; see
        `load_hf_yolos`), or initialise only the encoder from a plain ViT checkpoint (timm, torchvision,
        transformers ViT/DeiT: YOLOS's own recipe starts from DeiT weights). Returns what was loaded."""
        path = Path(checkpoint)
        weights = _weights_file(path) if path.is_dir() else path
        sd = load_checkpoint_file(weights)
        if any(k.endswith("embeddings.detection_tokens") for k in sd):
            return load_hf_yolos(self, sd, hf_grid=_hf_grid(path, sd), class_map=class_map, source=str(weights))
        return load_pretrained(self.encoder, sd)


# ------------------------------------------------------------------------------------ transformers import
# YOLOS's own keys; the `vit.*` encoder goes through the transformers ViT table (`rename_transformers_vit`)
_YOLOS_RENAMES = {"vit.embeddings.detection_tokens": "det_token", "class_labels_classifier.": "class_embed.",
                  "bbox_predictor.": "bbox_embed."}


def convert_hf_yolos(
    sd: dict[str, torch.Tensor], model: YOLOS, hf_grid: tuple[int, int] | None = None,
    class_map: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """A transformers `YolosForObjectDetection` state dict -> `model`'s names and shapes.

    q/k/v are fused into `qkv`; the position embeddings [class, patches, detection] are split, and the patch
    part resampled from `hf_grid` (the checkpoint config's image_size // patch_size) to the model's grid,
    bicubic without antialiasing as transformers does at run time. The class head is kept when it fits,
    else its rows are picked by `class_map` (the checkpoint's class index for each of the model's classes),
    or, for a 91-id COCO checkpoint loaded into an 80-class model, by `COCO_CATEGORY_IDS`.
    """
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    vit: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        own = next((o for o in _YOLOS_RENAMES if key.startswith(o)), None)
        if own is not None:
            out[_YOLOS_RENAMES[own] + key[len(own):]] = value
        elif key.startswith("vit."):
            vit[key[len("vit."):]] = value
        else:
            out[key] = value
    pe = vit.pop("embeddings.position_embeddings")  # (1, 1 + P + det, D)
    # (depth - 1, 1, 1 + P + det, D): the files' name, and the name of transformers 5's loaded module
    mid = vit.pop("encoder.mid_position_embeddings", vit.pop("encoder.interpolation.mid_position_embeddings", None))
    out.update({f"encoder.{k}": v for k, v in rename_transformers_vit(vit).items()})
    n_det = out["det_token"].shape[1]
    grid = hf_grid or _guess_grid(pe.shape[1] - 1 - n_det)
    out["encoder.pos_embed"] = _resample(pe[:, : pe.shape[1] - n_det], grid, model)
    out["det_pos_embed"] = pe[:, pe.shape[1] - n_det :]
    if mid is not None:
        layers = [torch.cat([_resample(m[:, : m.shape[1] - n_det], grid, model), m[:, m.shape[1] - n_det :]], 1)
                  for m in mid]
        out["mid_pos_embed"] = torch.stack(layers)
    _fit_classes(out, model.num_classes, class_map)
    return out


def load_hf_yolos(
    model: YOLOS,
    checkpoint: dict[str, torch.Tensor] | str | os.PathLike,
    hf_grid: tuple[int, int] | None = None,
    class_map: list[int] | None = None,
    source: str | None = None,
) -> dict[str, list[str]]:
    """Convert and load (strict) a transformers YOLOS checkpoint; a folder or file is read with its config.json
    when there is one. Returns {"missing": [], "unexpected": [...]} (the unexpected keys are ignored)."""
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)

        source = source or str(path)
        checkpoint = load_checkpoint_file(_weights_file(path) if path.is_dir() else path)
        hf_grid = hf_grid or _hf_grid(path, checkpoint)
    source = source or "<state dict>"
    sd = convert_hf_yolos(checkpoint, model, hf_grid, class_map)
    target = model.state_dict()
    if (model.mid_pos_embed is None) != ("mid_pos_embed" not in sd):
        have = "has" if "mid_pos_embed" in sd else "has no"
        raise CheckpointError(
            f"YOLOS checkpoint {source} {have} mid position embeddings; build the model with "
            f"mid_pos_embed={'mid_pos_embed' in sd} (yolos_small/base use them, yolos_tiny does not)"
        )
    bad = {k: (tuple(v.shape), tuple(target[k].shape))
           for k, v in sd.items() if k in target and v.shape != target[k].shape}
    if bad:
        listed = "; ".join(f"{k}: checkpoint {a}, model {b}" for k, (a, b) in list(bad.items())[:4])
        raise CheckpointError(f"YOLOS checkpoint {source}: shapes do not fit the model ({listed}); expected the same "
                              f"embed_dim/depth/num_det_tokens (see vitkit.list_models('yolos*', family='detection'))")
    missing = sorted(set(target) - set(sd))
    if missing:
        raise CheckpointError(f"YOLOS checkpoint {source}: no weights for {len(missing)} key(s): "
                              f"{', '.join(missing[:6])}")
    unexpected = sorted(set(sd) - set(target))
    model.load_state_dict({k: v for k, v in sd.items() if k in target})
    log.info("loaded YOLOS checkpoint %s (%d tensors%s)", source, len(target),
             f"; ignored {', '.join(unexpected)}" if unexpected else "")
    return {"missing": missing, "unexpected": unexpected}


def _resample(pe: torch.Tensor, grid: tuple[int, int], model: YOLOS) -> torch.Tensor:
    """(1, 1 + P, D) at `grid` -> the model's patch grid (class position kept)."""
    return resample_pos_embed(pe, model.encoder.patch_embed.grid_size, old_grid=grid, num_prefix_tokens=1,
                              antialias=False)


def _fit_classes(sd: dict[str, torch.Tensor], num_classes: int, class_map: list[int] | None) -> None:
    w, b = sd["class_embed.layers.2.weight"], sd["class_embed.layers.2.bias"]
    have = w.shape[0] - 1
    if class_map is None and have == num_classes:
        return
    if class_map is None and have == 91 and num_classes == len(COCO_CATEGORY_IDS):
        class_map = list(COCO_CATEGORY_IDS)
    if class_map is None or len(class_map) != num_classes or not all(0 <= c < have for c in class_map):
        raise CheckpointError(
            f"YOLOS checkpoint predicts {have} classes, the model {num_classes}; expected num_classes={have}, or a "
            f"class_map of {num_classes} indices into the checkpoint's classes (found {class_map!r})"
        )
    rows = torch.tensor(list(class_map) + [have])  # the no-object row stays last
    sd["class_embed.layers.2.weight"], sd["class_embed.layers.2.bias"] = w[rows], b[rows]


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin; "
                          "expected a transformers save_pretrained folder")


def _hf_grid(path: Path, sd: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """The patch grid of the checkpoint's position embeddings, from the config.json next to the weights."""
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        return None
    cfg = json.loads(config.read_text())
    size, patch = cfg.get("image_size"), cfg.get("patch_size", 16)
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    return h // patch, w // patch


def _guess_grid(num_patches: int) -> tuple[int, int]:
    """Without a config: the factorisation h x w (h <= w) closest to YOLOS's 800 x 1333 aspect ratio."""
    pairs = [(h, num_patches // h) for h in range(1, math.isqrt(num_patches) + 1) if num_patches % h == 0]
    h, w = min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / (800 / 1333))))
    log.warning("YOLOS checkpoint without config.json: assuming a %dx%d patch grid for its %d positions",
                h, w, num_patches)
    return h, w


# ------------------------------------------------------------------------------------ registered sizes
# The published sizes use the LayerNorm epsilon of transformers' checkpoints (1e-12), so their weights give the
# same boxes; the CPU-sized config keeps vitkit's 1e-6.
def _yolos(config: dict, **kwargs) -> YOLOS:
    """The registered sizes, `kwargs` over them; with `encoder=<name>` the ViT sizes give way to that encoder's."""
    if kwargs.get("encoder") is not None:
        config = {k: v for k, v in config.items() if k in ("img_size", "num_det_tokens", "mid_pos_embed")}
    return YOLOS(**{**config, **kwargs})


@register_model(family="detection")
def yolos_tiny(**kw) -> YOLOS:
    """YOLOS-Ti (DeiT-Ti encoder, 100 detection tokens; transformers `hustvl/yolos-tiny`)."""
    return _yolos(dict(img_size=512, embed_dim=192, depth=12, num_heads=3, norm_eps=1e-12), **kw)


@register_model(family="detection")
def yolos_small(**kw) -> YOLOS:
    """YOLOS-S (DeiT-S encoder, mid position embeddings; transformers `hustvl/yolos-small`)."""
    return _yolos(dict(img_size=800, embed_dim=384, depth=12, num_heads=6, mid_pos_embed=True, norm_eps=1e-12), **kw)


@register_model(family="detection")
def yolos_base(**kw) -> YOLOS:
    """YOLOS-B (DeiT-B encoder, mid position embeddings; transformers `hustvl/yolos-base`)."""
    return _yolos(dict(img_size=800, embed_dim=768, depth=12, num_heads=12, mid_pos_embed=True, norm_eps=1e-12), **kw)


@register_model(family="detection")
def yolos_nano_patch8_64(**kw) -> YOLOS:
    """CPU-sized: a 4-block 128-wide ViT with 8x8 patches on 64 px images and 16 detection tokens."""
    return _yolos(dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4, num_det_tokens=16), **kw)
