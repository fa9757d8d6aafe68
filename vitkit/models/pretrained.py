"""Loading pretrained ViT checkpoints (timm, torchvision, Hugging Face transformers) into vitkit's
`VisionTransformer`, after timm's `checkpoint_filter_fn`: rename keys, resample position embeddings,
drop a classifier that does not fit, and report every key that was not loaded.

    report = load_pretrained(model, "vit_b_16.pth")   # or vitkit.create_model(name, pretrained=path)
    print(report)
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import CheckpointError
from ..nn.embed import resample_pos_embed
from .checkpoint_files import (  # noqa: F401  (the file and Hub-cache readers are part of this module's API)
    HUB_FILENAMES,
    HUB_PREFIX,
    SAFETENSORS_SUFFIXES,
    TORCH_SUFFIXES,
    StateDict,
    _few,
    hub_cache_dir,
    hub_repo_id,
    load_checkpoint_file,
    resolve_hub_checkpoint,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

Format = Literal["timm", "torchvision", "transformers"]

_HEAD_KEYS = ("head.weight", "head.bias")


@dataclass
class LoadReport:
    """What `load_pretrained` did: keys left at their initialisation (`missing`), checkpoint keys the model
    has no place for (`unexpected`), keys dropped on purpose with the reason (`dropped`), tensors that were
    resampled (`resampled`, key -> description) and whether the classifier was re-initialised."""

    source: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    resampled: dict[str, str] = field(default_factory=dict)
    head_reinitialised: bool = False
    lossy: list[str] = field(default_factory=list)  # dropped keys whose loss changes what the encoder computes
    source_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)  # as read, before fitting

    @property
    def ok(self) -> bool:
        """True when every model key outside a deliberately re-initialised head came from the checkpoint."""
        return not (set(self.missing) - set(_HEAD_KEYS)) and not self.unexpected and not self.lossy

    def _unloaded(self) -> tuple[tuple[str, list[str]], ...]:
        return ("missing (left at initialisation)", self.missing), ("unexpected (ignored)", self.unexpected)

    def __str__(self) -> str:
        lines = [f"loaded {self.source} ({self.format} format)"]
        lines += [f"  resampled {k}: {v}" for k, v in self.resampled.items()]
        lines += [f"  dropped {k}: {v}" for k, v in self.dropped.items()]
        if self.head_reinitialised:
            lines.append("  classifier head re-initialised near zero (train it before use)")
        for name, keys in self._unloaded():
            if keys:
                lines.append(f"  {name}: {len(keys)} key(s): {_few(keys)}")
        if len(lines) == 1:
            lines.append("  every key matched")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- formats
def detect_format(sd: StateDict, source: str = "<state dict>") -> Format:
    """Which library wrote a ViT state dict; CheckpointError listing a few keys when none fits."""
    if "patch_embed.proj.weight" in sd and any(k.startswith("blocks.") for k in sd):
        return "timm"
    if "conv_proj.weight" in sd and "encoder.pos_embedding" in sd:
        return "torchvision"
    if _hf_prefix(sd) is not None:
        return "transformers"
    raise CheckpointError(
        f"checkpoint {source}: not a Vision Transformer state dict; expected timm keys (patch_embed.proj.weight, "
        f"blocks.0.attn.qkv.weight, ...), torchvision keys (conv_proj.weight, encoder.pos_embedding, "
        f"encoder.layers.encoder_layer_0.*) or transformers keys (vit.embeddings.patch_embeddings.projection.weight, "
        f"vit.encoder.layer.0.*); found {len(sd)} keys: {_few(sd)}"
    )


def _hf_prefix(sd: StateDict) -> str | None:
    for prefix in ("vit.", "deit.", ""):
        if f"{prefix}embeddings.patch_embeddings.projection.weight" in sd:
            return prefix
    return None


# torchvision `VisionTransformer` -> timm names (read from torchvision.models.VisionTransformer's state dict;
# `mlp.linear_1/2` are the names of torchvision < 0.13 checkpoints).
_TORCHVISION_RENAMES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.", r"blocks.\1.mlp.fc2."),
]

# transformers ViT/DeiT -> timm names, for the Hub layout (`encoder.layer.N.attention.attention.query`) and the
# transformers 5 layout (`layers.N.attention.q_proj`); `q/k/v` are concatenated into `qkv` afterwards.
_L = r"^(?:encoder\.layer|layers)\.(\d+)\."
_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (_L + r"attention\.(?:attention\.query|q_proj)\.", r"blocks.\1.attn.q."),
    (_L + r"attention\.(?:attention\.key|k_proj)\.", r"blocks.\1.attn.k."),
    (_L + r"attention\.(?:attention\.value|v_proj)\.", r"blocks.\1.attn.v."),
    (_L + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (_L + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_L + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_L + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
    (_L + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
]
_HF_HEADS = {"classifier.": "head.", "cls_classifier.": "head."}  # ViT/DeiT classifier, DeiT-with-teacher class head
_HF_DROPPED = {  # keys vitkit has no place for, with the reason given in the report
    "embeddings.distillation_token": "DeiT distillation token (vitkit's ViT has none; outputs differ from the source)",
    "embeddings.mask_token": "masked-image-modelling token (not used by a classifier)",
    "pooler.dense.weight": "ViTModel pooler (vitkit pools without a dense layer)",
    "pooler.dense.bias": "ViTModel pooler (vitkit pools without a dense layer)",
    "distillation_classifier.weight": "DeiT distillation head",
    "distillation_classifier.bias": "DeiT distillation head",
}


# Dropped keys that change what the encoder computes (the rest — a pooler, a mask token, a second classifier, a
# text tower — are not on the path from image to features): strict loading refuses them.
_LOSSY_DROPS = re.compile(r"distillation_token|position_embeddings\[")


def rename_transformers_vit(sd: StateDict) -> StateDict:
    """A transformers ViT encoder's weights (no model prefix: `embeddings.*`, `encoder.layer.N.*` or `layers.N.*`,
    `layernorm.*`) under timm/vitkit names, q/k/v fused into qkv; keys with no mapping kept as they are. The one
    rename table of every transformers import (ViT, DeiT, the YOLOS encoder)."""
    return _fuse_qkv({_rename(k, _HF_RENAMES) or k: v for k, v in sd.items()})


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def convert_state_dict(sd: StateDict, fmt: Format) -> tuple[StateDict, dict[str, str]]:
    """Rename a state dict of `fmt` to timm/vitkit names. Returns it and the keys dropped on purpose
    (source key -> reason); keys with no known mapping are kept as they are, to be reported unexpected."""
    if fmt == "timm":
        return convert_timm_eva(sd), {}
    if fmt == "torchvision":
        return {_rename(k, _TORCHVISION_RENAMES) or k: v for k, v in sd.items()}, {}
    return _convert_transformers(sd)


def _convert_transformers(sd: StateDict) -> tuple[StateDict, dict[str, str]]:
    prefix = _hf_prefix(sd) or ""
    out: StateDict = {}
    dropped: dict[str, str] = {}
    for key, value in sd.items():
        inner = key[len(prefix):] if key.startswith(prefix) else key
        if inner in _HF_DROPPED:
            dropped[key] = _HF_DROPPED[inner]
        elif head := next((h for h in _HF_HEADS if key.startswith(h)), None):
            out[_HF_HEADS[head] + key[len(head):]] = value
        else:
            out[_rename(inner, _HF_RENAMES) or key] = value
    if any(k.endswith("distillation_token") for k in dropped) and "pos_embed" in out:
        pe = out["pos_embed"]  # (1, 2 + N, D): class, distillation, patches -> drop the distillation position
        out["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
        dropped[f"{prefix}embeddings.position_embeddings[:, 1]"] = "position of the dropped distillation token"
    return _fuse_qkv(out), dropped


def convert_timm_eva(sd: StateDict) -> StateDict:
    """timm's `Eva` layout (EVA-02, RoPE ViTs, DINOv3) -> vitkit's: layer scales `gamma_1/2` -> `ls1/2.gamma`; a
    fused `qkv` with separate `q_bias`/`v_bias` (the key bias is a fixed zero) or unfused `q_proj`/`k_proj`/`v_proj`
    -> one `qkv` weight and bias; SwiGLU's `fc1_g`/`fc1_x` -> one packed `fc1` (gate rows first). A zero key bias
    changes no output: it adds the same q.b to every score of a query, which softmax removes. A state dict
    without these keys comes back unchanged."""
    out: StateDict = {}
    for key, value in sd.items():
        m = re.match(r"^(blocks\.\d+\.)(.+)$", key)
        rest = m.group(2) if m else ""
        if not m:
            out[key] = value
        elif rest in ("gamma_1", "gamma_2"):
            out[f"{m.group(1)}ls{rest[-1]}.gamma"] = value
        elif rest in ("attn.q_bias", "attn.k_proj.weight") or re.fullmatch(r"mlp\.fc1_g\.(weight|bias)", rest):
            out.update(_fused(sd, m.group(1), rest))
        elif not re.fullmatch(r"attn\.(v_bias|[qv]_proj\.(weight|bias))|mlp\.fc1_x\.(weight|bias)", rest):
            out[key] = value
    return out


def _fused(sd: StateDict, block: str, rest: str) -> StateDict:
    """The fused tensors for one block's Eva-style parts (see `convert_timm_eva`)."""
    def g(name: str) -> torch.Tensor:
        if block + name not in sd:
            raise CheckpointError(f"checkpoint: {block}{rest} without {block}{name}; expected both halves of timm's "
                                  f"Eva layout (q_bias with v_bias, q/k/v_proj together, fc1_g with fc1_x)")
        return sd[block + name]

    if rest == "attn.q_bias":
        q, v = g("attn.q_bias"), g("attn.v_bias")
        return {block + "attn.qkv.bias": torch.cat([q, torch.zeros_like(q), v])}
    if rest == "attn.k_proj.weight":
        fused = {block + "attn.qkv.weight": torch.cat([g(f"attn.{p}_proj.weight") for p in "qkv"])}
        if block + "attn.q_proj.bias" in sd:
            q = g("attn.q_proj.bias")
            fused[block + "attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), g("attn.v_proj.bias")])
        return fused
    kind = rest.rsplit(".", 1)[1]
    return {f"{block}mlp.fc1.{kind}": torch.cat([g(f"mlp.fc1_g.{kind}"), g(f"mlp.fc1_x.{kind}")])}


def _fuse_qkv(sd: StateDict) -> StateDict:
    """Concatenate `blocks.N.attn.{q,k,v}.{weight,bias}` into `blocks.N.attn.qkv.*` (timm's fused layout)."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"^(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)$", key)
        if not m:
            out[key] = value
        elif m.group(2) == "q":
            parts = [sd.get(f"{m.group(1)}{p}.{m.group(3)}") for p in "qkv"]
            if any(p is None for p in parts):
                out[key] = value  # incomplete triple: leave as is, reported unexpected
            else:
                out[f"{m.group(1)}qkv.{m.group(3)}"] = torch.cat(parts, dim=0)
        elif f"{m.group(1)}q.{m.group(3)}" not in sd:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- loading
def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    strict: bool = True,
    num_classes_changed_ok: bool = True,
    reset_head: bool = False,
    resample_patch_embed: bool = True,
    new_head_scale: float = 1e-3,
) -> LoadReport:
    """Load a timm, torchvision or transformers ViT checkpoint (a file or a state dict) into a vitkit
    `VisionTransformer`: rename keys, resample `pos_embed` to the model's patch grid (bicubic), replace a
    head whose number of classes differs (when `num_classes_changed_ok`), load, and report.

    Strict by default: CheckpointError, before changing the model, when any key other than the classifier head
    would be missing or unexpected, or a dropped key changes the features (a DeiT distillation token); the message
    names the keys and the option or registered model that fits the checkpoint. `strict=False` loads what fits
    and returns the report (read it: the model may then compute something else than the checkpoint's source).
    `checkpoint` may be a transformers `save_pretrained` folder (config.json + weights; `vitkit.models.hf_folders`).
    `reset_head=True` leaves the model's classifier at its initialisation even when the checkpoint's fits
    (transfer to another task with as many classes).

    `checkpoint` may also name a model on the Hugging Face Hub, `"hf-hub:timm/<name>"` (timm's convention;
    `"timm/<name>"` when no such file exists), read from the local Hub cache only: nothing is downloaded.
    `resample_patch_embed=True` resamples a patch embedding of another patch size (same width and channels)
    to the model's with FlexiViT's pseudo-inverse resize (`timm.layers.resample_patch_embed`); `pos_embed` then
    follows the model's patch grid as usual."""
    from .hf_folders import HFFolder, is_hf_folder, read_hf_folder  # hf_folders reads this module's tables

    is_file = isinstance(checkpoint, (str, os.PathLike))
    if is_file and is_hf_folder(checkpoint):
        checkpoint = read_hf_folder(checkpoint)
    if isinstance(checkpoint, HFFolder):
        return _load_converted(model, dict(checkpoint.state_dict), checkpoint.source,
                               f"transformers {checkpoint.model_type} folder", dict(checkpoint.dropped), strict,
                               num_classes_changed_ok, reset_head, resample_patch_embed, new_head_scale)
    source = str(checkpoint) if is_file else "<state dict>"
    if is_file and (repo_id := hub_repo_id(checkpoint)) is not None:
        path = resolve_hub_checkpoint(repo_id)
        source = f"{HUB_PREFIX}{repo_id} ({path})"
        sd = load_checkpoint_file(path)
    else:
        sd = load_checkpoint_file(checkpoint) if is_file else unwrap_state_dict(checkpoint, source)
    fmt = detect_format(sd, source)
    sd, dropped = convert_state_dict(sd, fmt)
    return _load_converted(model, sd, source, fmt, dropped, strict, num_classes_changed_ok, reset_head,
                           resample_patch_embed, new_head_scale)


def _load_converted(model: nn.Module, sd: StateDict, source: str, fmt: str, dropped: dict[str, str], strict: bool,
                    num_classes_changed_ok: bool, reset_head: bool, resample_patch_embed: bool,
                    new_head_scale: float) -> LoadReport:
    """Fit a state dict in vitkit names to `model` (patch kernel, positions, head), check it, load it, report."""
    lossy = [k for k in dropped if _LOSSY_DROPS.search(k)]
    report = LoadReport(source=source, format=fmt, dropped=dropped, lossy=lossy,
                        source_shapes={k: tuple(v.shape) for k, v in sd.items()})
    target = model.state_dict()
    if resample_patch_embed:
        _fit_patch_embed(sd, target, report)
    hints = _option_hints([k for k in target if k not in sd], [k for k in sd if k not in target])
    if "pos_embed" in sd and "pos_embed" in target:
        sd["pos_embed"] = _fit_pos_embed(sd["pos_embed"], model, source, report, hints)
    if reset_head:
        report.dropped.update({k: "reset_head=True" for k in _HEAD_KEYS if sd.pop(k, None) is not None})
    _fit_head(sd, target, source, num_classes_changed_ok, report)
    _check_shapes(sd, target, source, report.source_shapes if hasattr(model, "blocks") else None, hints)
    report.missing = [k for k in target if k not in sd]
    report.unexpected = [k for k in sd if k not in target]
    report.head_reinitialised = report.head_reinitialised or any(k in report.missing for k in _HEAD_KEYS)
    if strict:
        _check_strict(report, hasattr(model, "blocks"))
    model.load_state_dict(sd, strict=False)
    if report.head_reinitialised:
        _shrink_new_head(model, new_head_scale)
    (logger.info if report.ok and not report.dropped else logger.warning)("%s", report)
    return report


def _shrink_new_head(model: nn.Module, scale: float) -> None:
    """A fresh classifier on pretrained features starts near zero (weights x `scale`, bias 0), as in BEiT's
    (0.001) and MAE's fine-tuning: its first gradients then train the head, not the encoder, instead of sending
    a random head's error back through the features (the feature distortion of Kumar et al. 2022)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and scale != 1.0:
        with torch.no_grad():
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.zero_()


_PATCH_KEY = "patch_embed.proj.weight"
PATCH_RESAMPLE_INTERPOLATION = "bicubic"  # timm's default (its own checkpoint filter uses it), antialiased


def _fit_patch_embed(sd: StateDict, target: StateDict, report: LoadReport) -> None:
    """Resample a (D, C, p, p) patch-embedding kernel to the model's (D, C, q, q) kernel (FlexiViT, Beyer et al.
    2023): the new kernel is w' = pinv(B^T) w, where B resizes a p x p patch to q x q, so that <B x, w'> matches
    <x, w> (exactly when upsampling; in the least-squares sense over white-noise patches when downsampling)."""
    found, expected = sd.get(_PATCH_KEY), target.get(_PATCH_KEY)
    if found is None or expected is None or found.shape == expected.shape:
        return
    if found.ndim != 4 or expected.ndim != 4 or found.shape[:2] != expected.shape[:2]:
        return  # another width or channel count: a different model, reported by _check_shapes
    from timm.layers import resample_patch_embed  # lazy: only this needs timm

    new_size = [int(expected.shape[-2]), int(expected.shape[-1])]
    old_size = tuple(found.shape[-2:])
    sd[_PATCH_KEY] = resample_patch_embed(
        found, new_size=new_size, interpolation=PATCH_RESAMPLE_INTERPOLATION, antialias=True
    ).to(found.dtype)
    report.resampled[_PATCH_KEY] = (
        f"kernel {old_size[0]}x{old_size[1]} -> {new_size[0]}x{new_size[1]} "
        f"(FlexiViT pseudo-inverse resize, {PATCH_RESAMPLE_INTERPOLATION}, antialiased)"
    )


def _fit_pos_embed(pe: torch.Tensor, model: nn.Module, source: str, report: LoadReport,
                   hints: list[str] | None = None) -> torch.Tensor:
    """Resample a checkpoint's (1, prefix + h*w, D) position embedding to the model's grid; prefix positions
    (none for a `no_embed_class` model) are kept exactly."""
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    new_grid = tuple(model.patch_embed.grid_size)
    n = pe.shape[1] - prefix
    side = math.isqrt(max(n, 0))
    if n <= 0 or side * side != n:
        theirs = [p for p in range(9) if pe.shape[1] > p and math.isqrt(pe.shape[1] - p) ** 2 == pe.shape[1] - p]
        why = (f"; the checkpoint has {theirs[0]} prefix position(s) (class token, registers, no_embed_class "
               f"differ)" if theirs else "")
        raise CheckpointError(
            f"checkpoint {source}: pos_embed of shape {tuple(pe.shape)} holds {n} patch positions after the model's "
            f"{prefix} prefix position(s), not a square grid; expected {prefix} + h*w positions "
            f"(the model has a {new_grid[0]}x{new_grid[1]} grid: shape {tuple(model.pos_embed.shape)}){why}"
            f"{'. ' + '; '.join(hints) if hints else ''}"
        )
    if (side, side) == new_grid:
        return pe
    how = f"bicubic, {prefix} prefix position(s) kept"
    report.resampled["pos_embed"] = f"grid {side}x{side} -> {new_grid[0]}x{new_grid[1]} ({how})"
    return resample_pos_embed(pe, new_grid, (side, side), num_prefix_tokens=prefix, mode="bicubic", antialias=True)


def _fit_head(sd: StateDict, target: StateDict, source: str, changed_ok: bool, report: LoadReport) -> None:
    """Drop checkpoint head weights the model's head cannot take (other class count, or no head at all)."""
    if "head.weight" not in sd:
        return
    found = tuple(sd["head.weight"].shape)
    expected = tuple(target["head.weight"].shape) if "head.weight" in target else None
    if found == expected:
        return
    if expected is not None and found[1:] == expected[1:] and not changed_ok:
        raise CheckpointError(
            f"checkpoint {source}: head.weight has shape {found} ({found[0]} classes); the model expects {expected} "
            f"({expected[0]} classes). Pass num_classes={found[0]} to keep the checkpoint's classifier, or the "
            f"number of classes you want to train a new one (num_classes_changed_ok=True in load_pretrained)"
        )
    if expected is not None and found[1:] != expected[1:]:
        return  # a width mismatch is a different model, reported by _check_shapes
    reason = f"checkpoint has {found[0]} classes, model {expected[0]}" if expected else "model has no head"
    for k in _HEAD_KEYS:
        if sd.pop(k, None) is not None:
            report.dropped[k] = f"classifier does not fit: {reason}"
    report.head_reinitialised = expected is not None  # logged with the report once loading succeeded


def _check_shapes(sd: StateDict, target: StateDict, source: str, source_shapes: dict | None = None,
                  hints: list[str] | None = None) -> None:
    bad = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in sd.items()
           if k in target and v.shape != target[k].shape]
    if bad:
        hint = ""
        if any(k == _PATCH_KEY and f[:2] == e[:2] for k, f, e in bad):
            hint = " (a patch embedding of another patch size loads with resample_patch_embed=True)"
        fc2 = {k: sd.get(k[: -len("fc1.weight")] + "fc2.weight") for k, _, _ in bad if k.endswith("mlp.fc1.weight")}
        if any(w is not None and sd[k].shape[0] == 2 * w.shape[1] for k, w in fc2.items()):
            hint = (" (the checkpoint's fc1 is twice as wide as its fc2 reads: a packed SwiGLU MLP, "
                    "mlp_layer='swiglu' as in eva02_*)")
        details = "; ".join(f"{k}: checkpoint {f}, model {e}" for k, f, e in bad[:4])
        raise CheckpointError(
            f"checkpoint {source}: {len(bad)} tensor(s) do not fit the model ({details}); expected the same "
            f"architecture (embed_dim, depth, mlp_ratio, patch_size, stem_channels) as the checkpoint{hint}"
            f"{'. ' + '; '.join(hints) if hints else ''}{_names_hint(source_shapes)}"
        )


def _check_strict(report: LoadReport, suggest_names: bool = False) -> None:
    head_ok = set(_HEAD_KEYS)
    problems = [f"missing {k}" for k in report.missing if k not in head_ok]
    problems += [f"unexpected {k}" for k in report.unexpected]
    problems += [f"dropped {k} ({report.dropped[k]})" for k in report.lossy]
    if problems:
        hints = _option_hints(report.missing, report.unexpected)
        raise CheckpointError(
            f"checkpoint {report.source} ({report.format} format): strict loading refused, {len(problems)} key(s) "
            f"do not match: {_few(problems, 5)}; expected every key except the classifier head to load"
            f"{'. ' + '; '.join(hints) if hints else ''}{_names_hint(report.source_shapes if suggest_names else None)} "
            f"(strict=False loads what fits and reports the rest: the model may then compute something else)"
        )


# What a key the model lacks (unexpected) or the checkpoint lacks (missing) says about the checkpoint's family.
_UNEXPECTED_HINTS = [
    (r"^norm_pre\.", "the checkpoint has a norm before the blocks (CLIP): pre_norm=True, as vit_*_clip_*"),
    (r"^attn_pool\.", "the checkpoint pools with attention (SigLIP): global_pool='map', as vit_*_siglip_*"),
    (r"^rope\.", "the checkpoint has learned rotary frequencies: rope='mixed', as vit_*_rope_mixed_*"),
    (r"\.ls\d\.gamma$", "the checkpoint has layer scale: init_values=<any float> (DINOv2, DeiT III, RoPE ViT)"),
    (r"^reg_token$", "the checkpoint has register tokens: reg_tokens=<their number> (and no_embed_class=True)"),
    (r"\.attn\.norm\.", "the checkpoint normalises inside attention: scale_attn_inner=True (EVA-02 base)"),
    (r"\.mlp\.norm\.", "the checkpoint normalises inside the MLP: scale_mlp=True (EVA-02 base)"),
    (r"^pos_embed$", "the checkpoint has absolute positions the model lacks: pos_embed='learn'"),
]
_MISSING_HINTS = [
    (r"^pos_embed$", "the checkpoint has no absolute position embedding (RoPE only): pos_embed='none' and rope=..., "
                     "as vit_*_rope_* or vit_*_dinov3"),
    (r"^norm_pre\.", "the checkpoint has no norm before the blocks: pre_norm=False"),
    (r"^patch_embed\.proj\.bias$", "the checkpoint's patch projection has no bias: patch_bias=False"),
    (r"\.ls\d\.gamma$", "the checkpoint has no layer scale: init_values=None"),
    (r"^attn_pool\.", "the checkpoint has no attention pool: global_pool='token' or 'avg'"),
    (r"^reg_token$", "the checkpoint has no register tokens: reg_tokens=0"),
    (r"^cls_token$", "the checkpoint has no class token: class_token=False, global_pool='avg' or 'map'"),
]


def _option_hints(missing: list[str], unexpected: list[str]) -> list[str]:
    hints = []
    for keys, table in ((unexpected, _UNEXPECTED_HINTS), (missing, _MISSING_HINTS)):
        for pattern, hint in table:
            if any(re.search(pattern, k) for k in keys) and hint not in hints:
                hints.append(hint)
    return hints


def matching_models(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Registered vision models whose parameters have the names and shapes in `shapes` (a converted checkpoint's,
    key -> shape), apart from the classifier and the position grid (any grid, but the same prefix positions):
    built on the meta device, so the search costs no memory. An empty list: no registered config fits."""
    from .registry import create_model, list_models  # the registry imports this module

    def body(d: Mapping) -> dict:
        return {k: tuple(v) for k, v in d.items() if k not in _HEAD_KEYS and k != "pos_embed"}

    want, found = body(shapes), []
    for name in list_models(family="vision"):
        if name not in _LAYOUTS:
            try:
                with torch.device("meta"):
                    m = create_model(name, num_classes=0)
            except Exception:  # a builder that cannot run on the meta device is no candidate
                _LAYOUTS[name] = None
                continue
            prefix = 0 if getattr(m, "no_embed_class", False) else getattr(m, "num_prefix_tokens", 0)
            _LAYOUTS[name] = ({k: tuple(v.shape) for k, v in m.state_dict().items()}, prefix)
        if _LAYOUTS[name] is None:
            continue
        theirs, prefix = _LAYOUTS[name]
        if body(theirs) == want and _same_prefix_positions(shapes.get("pos_embed"), theirs.get("pos_embed"), prefix):
            found.append(name)
    return found


_LAYOUTS: dict[str, tuple[dict, int] | None] = {}  # registered name -> (parameter shapes, prefix positions)


def _same_prefix_positions(found: tuple | None, theirs: tuple | None, prefix: int) -> bool:
    if found is None or theirs is None:
        return found is None and theirs is None
    n = found[1] - prefix
    return n > 0 and math.isqrt(n) ** 2 == n


def _names_hint(shapes: Mapping | None) -> str:
    if not shapes:
        return ""
    names = matching_models(shapes)
    return f". Registered models of this layout: {', '.join(names[:6])}" if names else ""
