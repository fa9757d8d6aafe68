"""Reading checkpoint files: `.pth`/`.pt`/`.bin`/`.ckpt` (torch.load, weights only) and `.safetensors`, the
nestings and wrapper prefixes around the tensors, and the local Hugging Face Hub cache (never a download).
`vitkit.models.pretrained` turns what is read here into a model's weights."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError

logger = logging.getLogger("vitkit.models.pretrained")

StateDict = dict[str, torch.Tensor]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
_SUFFIXES = TORCH_SUFFIXES + SAFETENSORS_SUFFIXES
# Keys that mark a ViT state dict in each format (after any wrapper prefix is removed).
_MARKERS = ("patch_embed.proj.weight", "conv_proj.weight", "embeddings.patch_embeddings.projection.weight")
_NESTINGS = ("state_dict", "model", "module", "model_state_dict")  # checkpoint dicts that wrap the weights
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, a LightningModule's `self.model`

def _few(keys, n: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint_file(path: str | os.PathLike) -> StateDict:
    """Read a state dict from `.pth`/`.pt`/`.bin`/`.ckpt` (torch.load, weights only, on CPU) or `.safetensors`,
    unwrapping `state_dict`/`model` nestings and `module.`, `_orig_mod.`, Lightning `model.` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file; expected a {'/'.join(_SUFFIXES)} file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        obj = _read(path, _load_safetensors, "a safetensors file")
    elif suffix in TORCH_SUFFIXES:
        obj = _read(path, _load_torch, "a state dict written by torch.save")
    else:
        raise CheckpointError(
            f"checkpoint {path}: unknown file type {suffix!r}; expected one of {', '.join(_SUFFIXES)}"
        )
    return unwrap_state_dict(obj, source=str(path))


def _load_torch(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)  # weights only: no code runs from the file


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _read(path: Path, reader, expected: str):
    try:
        return reader(path)
    except Exception as e:  # corrupted, truncated, a pickled module, a different format: one message for all
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"expected {expected} (is the file complete and of the type its suffix says?)"
        ) from e


def unwrap_state_dict(obj, source: str = "<state dict>") -> StateDict:
    """Find the tensors of a checkpoint: descend into `state_dict`/`model` nestings, then remove wrapper
    prefixes (`module.` from DDP, `_orig_mod.` from torch.compile, `model.` from a LightningModule)."""
    if not isinstance(obj, Mapping):
        found = type(obj).__name__
        raise CheckpointError(f"checkpoint {source}: holds a {found}; expected a dict of tensors (a state dict)")
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NESTINGS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"checkpoint {source}: a dict without tensors (keys: {_few(map(str, obj))}); expected a state dict, "
                f"or one nested under {' / '.join(repr(k) for k in _NESTINGS)}"
            )
        obj = inner
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            stripped = _strip_prefix(sd, prefix, source)
            if stripped is not sd:
                sd, changed = stripped, True
    return sd


def _strip_prefix(sd: StateDict, prefix: str, source: str) -> StateDict:
    """`sd` without `prefix`: all keys when all have it, else the prefixed keys when they hold a ViT (a
    Lightning checkpoint also stores loss/metric buffers beside `model.`); otherwise `sd` itself."""
    inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not inner:
        return sd
    if len(inner) == len(sd):
        return inner
    outer = [k for k in sd if not k.startswith(prefix)]
    if _has_marker(inner) and not _has_marker(outer):
        logger.info("checkpoint %s: using the %d keys under %r, ignoring %d others", source, len(inner), prefix,
                    len(outer))
        return inner
    return sd


def _has_marker(keys) -> bool:
    return any(k.endswith(m) for k in keys for m in _MARKERS)


# ---------------------------------------------------------------------------------------------- Hub cache
HUB_PREFIX = "hf-hub:"
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes, in the order timm tries them


def hub_repo_id(name: str | os.PathLike) -> str | None:
    """The Hub repo id that `name` names: `"hf-hub:<org>/<name>"` (timm's convention), or `"timm/<name>"` when
    that is no existing path and has no checkpoint suffix; None for a file path."""
    if not isinstance(name, str):
        return None
    if name.startswith(HUB_PREFIX):
        repo_id = name[len(HUB_PREFIX):]
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
            raise CheckpointError(
                f"checkpoint {name}: {repo_id!r} is not a Hub repo id; expected {HUB_PREFIX}<org>/<name>, "
                f"e.g. {HUB_PREFIX}timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
            )
        return repo_id
    if (re.fullmatch(r"timm/[\w.\-]+", name) and Path(name).suffix.lower() not in _SUFFIXES
            and not Path(name).exists()):
        return name
    return None


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, read from the environment at each call (huggingface_hub reads it
    once, at import): HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def resolve_hub_checkpoint(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of `repo_id`'s weights in the local Hub cache (`model.safetensors`, else `pytorch_model.bin`, at
    the `main` revision). Never downloads: CheckpointError saying where it looked and how to fetch them."""
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError as e:
        raise CheckpointError(
            f"checkpoint {HUB_PREFIX}{repo_id}: reading the Hugging Face cache needs huggingface_hub "
            f"(pip install huggingface_hub); or pass the path of the checkpoint file"
        ) from e
    for filename in HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    raise CheckpointError(
        f"checkpoint {HUB_PREFIX}{repo_id}: {repo_id} is not in the local Hugging Face cache {cache} (looked for "
        f"{' or '.join(HUB_FILENAMES)} under {repo_dir}; the folder is HF_HUB_CACHE, else HF_HOME/hub, else "
        f"~/.cache/huggingface/hub). vitkit never downloads: on a machine with network run "
        f"`hf download {repo_id} model.safetensors` (older huggingface_hub: `huggingface-cli download "
        f"{repo_id} model.safetensors`), then copy its cache folder here or point HF_HUB_CACHE at it; "
        f"or pass the path of a downloaded checkpoint file"
    )
