"""Reading Hugging Face transformers `save_pretrained` folders (ViT, DeiT, DINOv2, CLIP and SigLIP vision towers)
as the keyword arguments and the state dict of vitkit's `VisionTransformer`, after timm's converters
(`timm/models/vision_transformer.py`: `checkpoint_filter_fn`, `_convert_dinov2`, `_convert_openai_clip`).

    folder = read_hf_folder("path/to/saved")          # or "hf-hub:facebook/dinov2-small" (local Hub cache only)
    model = VisionTransformer(**folder.kwargs)
    model.load_state_dict(folder.state_dict, strict=True)
    print(folder.dropped)                             # checkpoint keys not used, each with the reason
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint_files import HUB_PREFIX, StateDict, _few, hub_cache_dir, load_checkpoint_file, resolve_hub_checkpoint
from .pretrained import _HF_RENAMES, _L, _fuse_qkv, _rename

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "vit", "deit", "dinov2", "dinov2_with_registers", "clip_vision_model", "clip", "siglip_vision_model", "siglip",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # sharded weights

# transformers `hidden_act` -> vitkit `act_layer`; `gelu_new` is the tanh approximation under another name.
_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


@dataclass
class HFFolder:
    """A transformers folder read for vitkit: `VisionTransformer(**kwargs)` builds its architecture and
    `state_dict` (vitkit names) loads into it with `strict=True`; `dropped` names every checkpoint key left out
    and why; `labels` are the config's `id2label` names, in class order, when the checkpoint has a classifier."""

    source: str
    model_type: str
    kwargs: dict
    state_dict: StateDict
    dropped: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None


# ---------------------------------------------------------------------------------------------- families
# The transformers config defaults of each family (a config.json omits nothing that save_pretrained writes, but
# hand-written or old ones may): tests/test_hf_folders.py checks them against transformers' config classes.
_VIT_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                     qkv_bias=True)
_DINO_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, hidden_act="gelu",
                      layer_norm_eps=1e-6, image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                      layerscale_value=1.0, use_swiglu_ffn=False)
_DINO_REG_DEFAULTS = dict(_DINO_DEFAULTS, patch_size=16, num_register_tokens=4)
_CLIP_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5, image_size=224, patch_size=32, num_channels=3)
_SIGLIP_DEFAULTS = dict(_CLIP_DEFAULTS, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, patch_size=16,
                        vision_use_head=True)

_POOLER = "ViTModel pooler, tanh(dense(class token)): vitkit pools without a dense layer (pre_logits is its input)"
_MASK = "masked-image-modelling token (used only with bool_masked_pos, never in a forward on images)"
_DISTILL_HEAD = ("DeiT distillation classifier: transformers' distilled logits average it with the class head; "
                 "vitkit's head is the class head alone, so its logits are transformers' cls_logits")
_DINO_HEAD = ("Dinov2 classifier reads cat(class token, mean of patch tokens), a head vitkit's VisionTransformer has "
              "no equivalent of (num_classes=0; train a head on forward_features)")
_TEXT = "text tower of the image-text model (vitkit reads the vision tower)"
_IDS = "position ids buffer (0..N-1, not a weight)"

_DINO_RENAMES = [
    (_L + r"norm1\.", r"blocks.\1.norm1."),
    (_L + r"norm2\.", r"blocks.\1.norm2."),
    (_L + r"layer_scale1\.lambda1$", r"blocks.\1.ls1.gamma"),
    (_L + r"layer_scale2\.lambda1$", r"blocks.\1.ls2.gamma"),
    *_HF_RENAMES,
]
# CLIP/SigLIP vision towers (`vision_model.` in the Hub layout); q/k/v are fused into qkv afterwards and SigLIP's
# `in_proj` split into q and kv (timm's AttentionPoolLatent layout).
_E = r"^encoder\.layers\.(\d+)\."
_CLIP_RENAMES = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^pre_layrnorm\.", "norm_pre."),
    (r"^post_layernorm\.", "norm."),
    (_E + r"self_attn\.([qkv])_proj\.", r"blocks.\1.attn.\2."),
    (_E + r"self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (_E + r"layer_norm1\.", r"blocks.\1.norm1."),
    (_E + r"layer_norm2\.", r"blocks.\1.norm2."),
    (_E + r"mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (r"^head\.probe$", "attn_pool.latent"),
    (r"^head\.attention\.in_proj_(weight|bias)$", r"attn_pool.in_proj.\1"),
    (r"^head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"^head\.layernorm\.", "attn_pool.norm."),
    (r"^head\.mlp\.(fc1|fc2)\.", r"attn_pool.mlp.\1."),
]
_CLIP_DROPPED = [
    (r"^text_model\.", _TEXT),
    (r"^text_projection\.", "projection of the text feature into the joint image-text space (text tower)"),
    (r"^visual_projection\.", "projection of the pooled image feature into the joint image-text space: vitkit's "
                              "VisionTransformer has no such layer (pre_logits is the feature before it)"),
    (r"^logit_(scale|bias)$", "contrastive loss temperature / bias (image-text matching, not the image encoder)"),
    (r"position_ids$", _IDS),
]


@dataclass(frozen=True)
class _Family:
    prefix: str  # the encoder's prefix in a task model ("vit." in ViTForImageClassification), optional in the keys
    renames: list  # (pattern, replacement) on keys without the prefix
    dropped: list  # (pattern, reason) on whole keys
    heads: tuple = ()  # classifier prefixes that become vitkit's `head.`
    defaults: dict = field(default_factory=dict)


def _vit_dropped(*extra) -> list:
    return [(r"embeddings\.mask_token$", _MASK), (r"pooler\.dense\.(weight|bias)$", _POOLER),
            (r"^decoder\.", "masked-image-modelling decoder (not part of the encoder)"), *extra]


_FAMILIES = {
    "vit": _Family("vit.", _HF_RENAMES, _vit_dropped(), ("classifier.",), _VIT_DEFAULTS),
    # DeiT's distillation token sits where a register token would: second, with its own position embedding.
    "deit": _Family("deit.", [(r"^embeddings\.distillation_token$", "reg_token"), *_HF_RENAMES],
                    _vit_dropped((r"^distillation_classifier\.", _DISTILL_HEAD)), ("cls_classifier.", "classifier."),
                    _VIT_DEFAULTS),
    "dinov2": _Family("dinov2.", _DINO_RENAMES, _vit_dropped((r"^classifier\.", _DINO_HEAD)), (), _DINO_DEFAULTS),
    "dinov2_with_registers": _Family(
        "dinov2_with_registers.", [(r"^embeddings\.register_tokens$", "reg_token"), *_DINO_RENAMES],
        _vit_dropped((r"^classifier\.", _DINO_HEAD)), (), _DINO_REG_DEFAULTS),
    "clip": _Family("vision_model.", _CLIP_RENAMES, _CLIP_DROPPED, (), _CLIP_DEFAULTS),
    "siglip": _Family("vision_model.", _CLIP_RENAMES, _CLIP_DROPPED, (), _SIGLIP_DEFAULTS),
}
_FAMILIES["clip_vision_model"] = _FAMILIES["clip"]
_FAMILIES["siglip_vision_model"] = _FAMILIES["siglip"]


# ---------------------------------------------------------------------------------------------- public API
def is_hf_folder(path: str | os.PathLike) -> bool:
    """True for a directory holding config.json, or an `hf-hub:<org>/<name>` whose cached snapshot has one."""
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        return _cached_config(path[len(HUB_PREFIX):]) is not None
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_hf_folder(path: str | os.PathLike) -> HFFolder:
    """Read a transformers `save_pretrained` folder (or `hf-hub:<org>/<name>` from the local Hub cache) of a
    model type in SUPPORTED_MODEL_TYPES; CheckpointError naming the path, what was found and what was expected
    for a folder that is not one, an unsupported model type, or an architecture vitkit cannot represent."""
    folder, source = _locate(path)
    config_path = folder / "config.json"
    config = _read_config(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not supported; expected one of "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    family = _FAMILIES[model_type]
    vision = {**family.defaults, **_vision_config(config, model_type, config_path)}
    kwargs = _encoder_kwargs(vision, config_path)  # the config's options are checked before the weights are read
    if vision.get("use_swiglu_ffn"):
        raise CheckpointError(f"{config_path}: use_swiglu_ffn=True (a SwiGLU feed-forward, as in DINOv2-g) cannot be "
                              f"represented by vitkit's VisionTransformer; expected use_swiglu_ffn=false")
    sd, dropped = _rename_keys(_read_weights(folder, source), family, model_type, source)
    labels = _labels(config, sd, dropped, config_path)
    if model_type in ("clip", "clip_vision_model", "siglip", "siglip_vision_model"):
        _clip_layout(kwargs, sd, vision, model_type)
    else:
        _vit_layout(kwargs, sd, vision, model_type)
    kwargs["num_classes"] = 0 if "head.weight" not in sd else (len(labels) if labels else sd["head.weight"].shape[0])
    _check_fits(kwargs, sd, source)
    return HFFolder(source, model_type, kwargs, sd, dropped, labels)


# ---------------------------------------------------------------------------------------------- files
def _locate(path: str | os.PathLike) -> tuple[Path, str]:
    """The folder to read and how to name it in messages."""
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        repo_id = path[len(HUB_PREFIX):]
        folder = _hub_snapshot(repo_id)
        return folder, f"{path} ({folder})"
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder; expected a transformers save_pretrained folder "
                              f"(config.json + {' or '.join(WEIGHT_FILES)})")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: a file, not a folder; expected a transformers save_pretrained folder "
                              f"(config.json + {' or '.join(WEIGHT_FILES)}); a single checkpoint file loads with "
                              f"vitkit.weights.load_pretrained")
    if not (folder / "config.json").is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(
            f"{folder}: no config.json; expected a transformers save_pretrained folder (config.json + "
            f"{' or '.join(WEIGHT_FILES)}); found {len(found)} file(s): {_few(found) if found else 'none'}"
        )
    return folder, str(folder)


def _cached_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        return None
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of `repo_id` (its config.json's folder); never downloads."""
    config = _cached_config(repo_id)
    if config is not None:
        return config.parent
    weights = resolve_hub_checkpoint(repo_id)  # its CheckpointError says where it looked and how to fetch
    raise CheckpointError(
        f"{HUB_PREFIX}{repo_id}: the cached snapshot {weights.parent} has {weights.name} but no config.json; "
        f"expected a transformers save_pretrained folder (vitkit never downloads: run `hf download {repo_id} "
        f"config.json` on a machine with network, or load the weights alone with vitkit.weights.load_pretrained)"
    )


def _read_config(path: Path, what: str = "the config.json") -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e}); expected {what} that "
                              f"transformers' save_pretrained writes") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(config).__name__}; expected {what} (a JSON object)")
    return config


def _read_weights(folder: Path, source: str) -> StateDict:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return load_checkpoint_file(folder / name)
    for name in INDEX_FILES:
        if (folder / name).is_file():
            return _read_shards(folder / name)
    found = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{source}: no weights file; expected {', '.join(WEIGHT_FILES)} or a sharded {' / '.join(INDEX_FILES)} "
        f"next to config.json; found {_few(found)}"
    )


def _read_shards(index: Path) -> StateDict:
    """The tensors of a sharded checkpoint: every file its index's `weight_map` names, merged."""
    weight_map = _read_config(index, "the shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map; expected the index save_pretrained writes for shards")
    sd: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        sd.update(load_checkpoint_file(index.parent / shard))
    return sd


# ---------------------------------------------------------------------------------------------- config
def _vision_config(config: dict, model_type: str, where: Path) -> dict:
    """The vision tower's config: the whole config, or a CLIP/SigLIP model's `vision_config`."""
    if model_type not in ("clip", "siglip"):
        return config
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise CheckpointError(f"{where}: model_type {model_type!r} without a vision_config object (found "
                              f"{type(vision).__name__}); expected the config of a full {model_type} model")
    return vision


def _encoder_kwargs(cfg: dict, where: Path) -> dict:
    """The keyword arguments every family shares: sizes, activation, LayerNorm epsilon."""
    act = cfg["hidden_act"]
    if act not in _ACTS:
        raise CheckpointError(f"{where}: hidden_act={act!r} cannot be represented by vitkit's VisionTransformer; "
                              f"expected one of {', '.join(_ACTS)}")
    dim = int(cfg["hidden_size"])
    hidden = int(dim * cfg["mlp_ratio"]) if "mlp_ratio" in cfg else int(cfg["intermediate_size"])
    return dict(
        img_size=_img_size(cfg, where), patch_size=_patch_size(cfg, where), in_chans=int(cfg["num_channels"]),
        embed_dim=dim, depth=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
        mlp_ratio=_mlp_ratio(hidden, dim, where), qkv_bias=bool(cfg.get("qkv_bias", True)), act_layer=_ACTS[act],
        norm_eps=float(cfg["layer_norm_eps"]), pos_embed="learn", fc_norm=False,
    )


def _patch_size(cfg: dict, where: Path) -> int:
    p = cfg["patch_size"]
    if isinstance(p, (list, tuple)):
        if len(p) != 2 or p[0] != p[1]:
            raise CheckpointError(f"{where}: patch_size={p!r}; expected a square patch (vitkit's VisionTransformer "
                                  f"takes one patch side)")
        p = p[0]
    return int(p)


def _img_size(cfg: dict, where: Path) -> int | tuple[int, int]:
    size, p = cfg["image_size"], _patch_size(cfg, where)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h % p or w % p:
        raise CheckpointError(f"{where}: image_size={size!r} is not a multiple of patch_size={p} (transformers drops "
                              f"the remainder); expected sides divisible by the patch size")
    return int(h) if h == w else (int(h), int(w))


def _mlp_ratio(hidden: int, dim: int, where: Path) -> float:
    """A float ratio that vitkit's `int(dim * mlp_ratio)` turns back into `hidden` exactly (hidden/dim can fall
    one ulp short, e.g. 61/56, and would build a 60-wide MLP)."""
    ratio = hidden / dim
    for _ in range(4):
        if int(dim * ratio) >= hidden:
            break
        ratio = math.nextafter(ratio, math.inf)
    if int(dim * ratio) != hidden:
        raise CheckpointError(f"{where}: MLP width {hidden} for hidden_size {dim} cannot be written as vitkit's "
                              f"mlp_ratio (int(dim * ratio) gives {int(dim * ratio)}); expected a representable ratio")
    return ratio


def _labels(config: dict, sd: StateDict, dropped: dict, where: Path) -> list[str] | None:
    """The class names of `id2label`, in class order, for a checkpoint with a classifier."""
    has_head = "head.weight" in sd or any(k.endswith(("classifier.weight", "classifier.bias")) for k in dropped)
    id2label = config.get("id2label")
    if not has_head or not isinstance(id2label, dict):
        return None
    try:
        ids = sorted(int(k) for k in id2label)
    except ValueError as e:
        raise CheckpointError(f"{where}: id2label keys {_few(id2label)}; expected class indices") from e
    if ids != list(range(len(ids))):
        raise CheckpointError(f"{where}: id2label has indices {_few(map(str, ids))}; expected 0..{len(ids) - 1}")
    return [str(id2label[str(i)]) for i in ids]


# ---------------------------------------------------------------------------------------------- weights
def _rename_keys(sd: StateDict, family: _Family, model_type: str, source: str) -> tuple[StateDict, dict[str, str]]:
    """Checkpoint keys -> vitkit names, or dropped with a reason; a key neither knows is an error (it may carry an
    architecture feature vitkit lacks)."""
    out: StateDict = {}
    dropped: dict[str, str] = {}
    unknown = []
    for key, value in sd.items():
        reason = next((why for pattern, why in family.dropped if re.search(pattern, key)), None)
        head = next((h for h in family.heads if key.startswith(h)), None)
        inner = key[len(family.prefix):] if key.startswith(family.prefix) else key
        if reason is not None:
            dropped[key] = reason
        elif head is not None:
            out["head." + key[len(head):]] = value
        elif (new := _rename(inner, family.renames)) is not None:
            out[new] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} checkpoint key(s) vitkit cannot place for model_type {model_type!r}: "
            f"{_few(unknown)}; expected only the keys of a transformers {model_type} model (an unknown key may be "
            f"an architecture option vitkit's VisionTransformer cannot represent)"
        )
    return _fuse_qkv(out), dropped


def _vit_layout(kwargs: dict, sd: StateDict, cfg: dict, model_type: str) -> None:
    """ViT, DeiT, Dinov2: class token with a position, patch bias, no pre-norm; layer scale for Dinov2."""
    kwargs.update(global_pool="token", class_token=True, reg_tokens=0, no_embed_class=False, pre_norm=False,
                  patch_bias="patch_embed.proj.bias" in sd, init_values=None)
    if model_type == "deit":  # distillation token -> the one register token, its position kept (second)
        kwargs["reg_tokens"] = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    if model_type.startswith("dinov2"):
        kwargs["init_values"] = float(cfg["layerscale_value"]) or 1.0  # any non-zero: the checkpoint sets gamma
    if model_type == "dinov2_with_registers":
        _fold_class_position(sd)
        kwargs.update(reg_tokens=int(cfg["num_register_tokens"]), no_embed_class=True)


def _fold_class_position(sd: StateDict) -> None:
    """Dinov2WithRegisters adds positions to [class, patches], then inserts the registers (no position) after the
    class token: vitkit's `no_embed_class` layout (timm's reg4 DINOv2) with the class position added to the
    class token, the patch positions kept. Same tokens at the native grid, and a resampled grid moves only the
    patch positions in both."""
    pe = sd["pos_embed"]  # (1, 1 + N, D)
    sd["cls_token"] = sd["cls_token"] + pe[:, :1]
    sd["pos_embed"] = pe[:, 1:].contiguous()


def _clip_layout(kwargs: dict, sd: StateDict, cfg: dict, model_type: str) -> None:
    """CLIP: class token, pre-norm, no patch bias, post-norm on the class token (vitkit's norm on every token,
    then class pooling: the same pooled feature). SigLIP: no class token, attention-pool head (`map`)."""
    if "pos_embed" in sd and sd["pos_embed"].ndim == 2:
        sd["pos_embed"] = sd["pos_embed"][None]  # (N, D) embedding table -> (1, N, D)
    if "cls_token" in sd:
        sd["cls_token"] = sd["cls_token"].reshape(1, 1, -1)  # (D,) -> (1, 1, D)
    clip = model_type.startswith("clip")
    kwargs.update(class_token=clip, reg_tokens=0, no_embed_class=False, pre_norm=clip, init_values=None,
                  patch_bias="patch_embed.proj.bias" in sd)
    if clip:
        kwargs["global_pool"] = "token"
    else:
        kwargs["global_pool"] = "map" if cfg.get("vision_use_head", True) else "avg"
        _split_in_proj(sd)


def _split_in_proj(sd: StateDict) -> None:
    """nn.MultiheadAttention's packed (3D, D) in_proj -> timm's AttentionPoolLatent q (D, D) and kv (2D, D)."""
    for kind in ("weight", "bias"):
        packed = sd.pop(f"attn_pool.in_proj.{kind}", None)
        if packed is not None:
            dim = packed.shape[0] // 3
            sd[f"attn_pool.q.{kind}"], sd[f"attn_pool.kv.{kind}"] = packed[:dim], packed[dim:]


def _expected_shapes(kw: dict) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors that pin down the architecture of `VisionTransformer(**kw)`."""
    dim, p, depth = kw["embed_dim"], kw["patch_size"], kw["depth"]
    h, w = (kw["img_size"],) * 2 if isinstance(kw["img_size"], int) else kw["img_size"]
    prefix = int(kw["class_token"]) + kw["reg_tokens"]
    shapes = {"patch_embed.proj.weight": (dim, kw["in_chans"], p, p),
              "pos_embed": (1, (h // p) * (w // p) + (0 if kw["no_embed_class"] else prefix), dim)}
    shapes.update({f"blocks.{i}.attn.qkv.weight": (3 * dim, dim) for i in range(depth)})
    shapes.update({f"blocks.{i}.mlp.fc1.weight": (int(dim * kw["mlp_ratio"]), dim) for i in range(depth)})
    if kw["class_token"]:
        shapes["cls_token"] = (1, 1, dim)
    if kw["reg_tokens"]:
        shapes["reg_token"] = (1, kw["reg_tokens"], dim)
    if kw["num_classes"]:
        shapes["head.weight"] = (kw["num_classes"], dim)
    if kw["global_pool"] == "map":
        shapes["attn_pool.latent"] = (1, 1, dim)
    return shapes


def _check_fits(kwargs: dict, sd: StateDict, source: str) -> None:
    """The config and the weights describe the same model: CheckpointError listing the first disagreements."""
    expected = _expected_shapes(kwargs)
    bad = [f"{k}: missing, config expects {e}" for k, e in expected.items() if k not in sd]
    bad += [f"{k}: checkpoint {tuple(sd[k].shape)}, config {e}" for k, e in expected.items()
            if k in sd and tuple(sd[k].shape) != e]
    depth = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if depth and max(depth) >= kwargs["depth"]:
        bad.append(f"blocks: checkpoint has {max(depth) + 1}, config num_hidden_layers={kwargs['depth']}")
    if bad:
        raise CheckpointError(f"{source}: the weights do not fit config.json ({'; '.join(bad[:4])}); expected the "
                              f"config and weights of one model, as save_pretrained writes them")

