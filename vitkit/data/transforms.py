"""Albumentations pipelines: the default augmentations per dataset family and pipelines built from YAML lists."""
from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torchvision.transforms import v2 as tv2

from ..errors import ConfigError
from .images import ImageStats


def digits_transforms(img_size: int, train: bool) -> list[A.BasicTransform]:
    """Digits, MNIST, Fashion-MNIST: cubic upsampling, then a light affine jitter for training.

    No horizontal flip: a mirrored digit is a different (or no) digit.
    """
    steps: list[A.BasicTransform] = [A.Resize(height=img_size, width=img_size, interpolation=cv2.INTER_CUBIC)]
    if train:
        steps.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-10, 10), p=0.5))
    return steps


def cifar_transforms(img_size: int, train: bool) -> list[A.BasicTransform]:
    """CIFAR-10/100: resize when img_size is not the native 32; for training the classic pad-4 random crop + flip."""
    steps: list[A.BasicTransform] = []
    if img_size != 32:
        steps.append(A.Resize(height=img_size, width=img_size, interpolation=cv2.INTER_CUBIC))
    if train:
        padded = img_size + 8  # 4 px on each side
        steps += [
            A.PadIfNeeded(min_height=padded, min_width=padded, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=img_size, width=img_size),
            A.HorizontalFlip(p=0.5),
        ]
    return steps


def imagefolder_transforms(img_size: int, train: bool) -> list[A.BasicTransform]:
    """Photos of any size: Inception-style random resized crop to train; eval resizes to 1/0.875 and centre-crops."""
    if train:
        return [A.RandomResizedCrop(size=(img_size, img_size), scale=(0.35, 1.0)), A.HorizontalFlip(p=0.5)]
    return [A.SmallestMaxSize(max_size=round(img_size / 0.875)), A.CenterCrop(height=img_size, width=img_size)]


# Image folders: the default pipeline is chosen from what the folder holds (`choose_folder_pipeline`).
SMALL_IMAGE_SIDE = 64  # px: thumbnails, digits, CIFAR-like crops; an 8 %-area crop of these leaves nothing
LARGE_DATASET = 100_000  # images: ImageNet-scale folders get Inception's full crop-scale range


@dataclass(frozen=True)
class FolderPipeline:
    """The default augmentation chosen for an image folder, and why: `name` is one of "small-gray",
    "small-colour", "photo-gray", "photo-colour"; `train` and `eval` are albumentations steps (before Normalize)."""

    name: str
    reason: str
    train: list[A.BasicTransform]
    eval: list[A.BasicTransform]


def choose_folder_pipeline(stats: ImageStats, img_size: int, auto_augment: bool = False) -> FolderPipeline:
    """The default pipeline for a folder whose training images look like `stats`.

    - Small images (median short side at most `SMALL_IMAGE_SIDE` px, or at most half of `img_size`) are
      resized whole and jittered lightly (scale 0.9-1.1, shift 10 %, rotation 10 degrees, half the time), as the
      digits are: a random-resized crop of a 28 px image keeps a few strokes, and a centre crop at test time
      cuts the edges off. Photos get the Inception-style random-resized crop (scale from 0.35, or from 0.08 as
      timm for ImageNet-scale folders of `LARGE_DATASET` images) and a resize + centre crop for evaluation.
    - Grayscale images are never flipped (a mirrored digit or letter is another, or none) and get no colour
      jitter; colour images are flipped, and colour photos jittered as timm does (brightness, contrast and
      saturation 0.4) unless RandAugment/TrivialAugment already changes colours.
    """
    small = stats.short_side <= max(SMALL_IMAGE_SIDE, img_size // 2)
    gray = stats.grayscale
    name = f"{'small' if small else 'photo'}-{'gray' if gray else 'colour'}"
    seen = f"median {stats.median_size[0]}x{stats.median_size[1]} px {'grayscale' if gray else 'colour'} images"
    flip = [] if gray else [A.HorizontalFlip(p=0.5)]
    if small:
        train = [*digits_transforms(img_size, train=True), *flip]
        evaluate = digits_transforms(img_size, train=False)
        why = (f"{seen}, small against img_size {img_size}: resized whole + light affine jitter"
               f"{'' if gray else ' + horizontal flip'}; evaluation resizes whole")
    else:
        low = 0.08 if stats.images >= LARGE_DATASET else 0.35
        jitter = [] if gray or auto_augment else [A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0)]
        train = [A.RandomResizedCrop(size=(img_size, img_size), scale=(low, 1.0)), *flip, *jitter]
        evaluate = imagefolder_transforms(img_size, train=False)
        why = (f"{seen}, {stats.images} of them: random-resized crop (scale {low}-1)"
               f"{'' if gray else ' + horizontal flip'}{' + colour jitter' if jitter else ''}; evaluation resizes "
               "and centre-crops")
    if gray:
        why += "; grayscale: no flip, no colour jitter"
    return FolderPipeline(name, why, train, evaluate)


def default_eval_steps(dataset: str, img_size: int, folder_pipeline: str | None = None) -> list[A.BasicTransform]:
    """The default evaluation steps of a dataset family; for an image folder, those of the pipeline that was
    chosen for it (`FolderPipeline.name`, kept in checkpoints), or the photo one when that is not known."""
    if dataset == "imagefolder" and (folder_pipeline or "").startswith("small"):
        return digits_transforms(img_size, train=False)
    return DEFAULT_TRANSFORMS[dataset](img_size, train=False) if dataset in DEFAULT_TRANSFORMS else []


DEFAULT_TRANSFORMS = {
    "digits": digits_transforms,
    "mnist": digits_transforms,
    "fashion_mnist": digits_transforms,
    "cifar10": cifar_transforms,
    "cifar100": cifar_transforms,
    "imagefolder": imagefolder_transforms,
}


AutoAugment = Literal["none", "randaugment", "trivialaugment"]
AUTO_AUGMENTS: tuple[str, ...] = get_args(AutoAugment)


class TorchvisionAutoAugment(A.ImageOnlyTransform):
    """RandAugment (Cubuk et al. 2020) or TrivialAugment (Müller & Hutter 2021) as an albumentations step.

    albumentations has neither, so this wraps torchvision's `v2.RandAugment` / `v2.TrivialAugmentWide` on the
    uint8 (H, W, C) image. torchvision draws from torch's global RNG; each call here runs it under a torch seed
    drawn from this step's own generator, so `Compose.set_random_seed` (see `seed_transform`) governs it like
    every other step and the global torch stream (model init, dropout, shuffling) is left untouched.

    Args:
        policy: "randaugment" or "trivialaugment".
        magnitude: RandAugment magnitude, 0..30 (torchvision's scale; 9 is the paper's ImageNet value).
        num_ops: RandAugment operations applied in sequence per image.
        p: probability of applying the step.
    """

    def __init__(self, policy: str = "randaugment", magnitude: int = 9, num_ops: int = 2, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.policy, self.magnitude, self.num_ops = policy, magnitude, num_ops
        if policy == "randaugment":
            self.op = tv2.RandAugment(num_ops=num_ops, magnitude=magnitude)
        elif policy == "trivialaugment":
            self.op = tv2.TrivialAugmentWide()
        else:
            raise ValueError(f"policy {policy!r} is not 'randaugment' or 'trivialaugment'")

    def get_params(self) -> dict[str, Any]:
        return {"torch_seed": int(self.random_generator.integers(2**63))}

    def apply(self, img: np.ndarray, torch_seed: int = 0, **params: Any) -> np.ndarray:
        chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # (H, W, C) uint8 -> (C, H, W)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            out = self.op(chw)
        return np.ascontiguousarray(out.permute(1, 2, 0).numpy())  # (C, H, W) -> (H, W, C)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy", "magnitude", "num_ops")


def auto_augment_step(
    policy: str, magnitude: int = 9, num_ops: int = 2, field: str = "data.auto_augment"
) -> list[A.BasicTransform]:
    """[] for "none", else one TorchvisionAutoAugment step; a bad policy or range is a ConfigError naming `field`."""
    if policy not in AUTO_AUGMENTS:
        raise ConfigError(f"{field}: found {policy!r}; expected one of {', '.join(AUTO_AUGMENTS)}")
    if policy == "none":
        return []
    prefix = field.rsplit(".", 1)[0]
    if not 0 <= magnitude <= 30:
        raise ConfigError(f"{prefix}.randaugment_magnitude: found {magnitude!r}; expected an integer in 0..30")
    if num_ops < 1:
        raise ConfigError(f"{prefix}.randaugment_ops: found {num_ops!r}; expected 1 or more")
    return [TorchvisionAutoAugment(policy, magnitude=magnitude, num_ops=num_ops)]


def build_transforms(
    spec: Sequence[Mapping] | None,
    default: Sequence[A.BasicTransform],
    field: str,
    mean: Sequence[float],
    std: Sequence[float],
    extra: Sequence[A.BasicTransform] = (),
) -> A.Compose:
    """A pipeline from a YAML list, or `default` when `spec` is None; Normalize + ToTensorV2 are always appended.

    Args:
        spec: entries like `{name: HorizontalFlip, p: 0.5}`: `name` is an albumentations class, the other
            keys its keyword arguments. None means `default`; an empty list means no augmentation.
        default: the transforms used when `spec` is None.
        field: config field of `spec`, used in error messages (e.g. "data.train_transforms").
        mean: per-channel mean of Normalize, for pixel values scaled to 0..1.
        std: per-channel standard deviation of Normalize.
        extra: steps appended after the augmentations and before Normalize (e.g. `auto_augment_step(...)`,
            which like timm runs after the crop and flip).

    Returns:
        A Compose mapping `image=` an (H, W, 3) uint8 array to a (3, H, W) float32 tensor.
    """
    if spec is None:
        steps = list(default)
    elif isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ConfigError(f"{field}: expected a list like [{{name: HorizontalFlip, p: 0.5}}]; found {spec!r}")
    else:
        steps = [make_transform(entry, where=f"{field}[{i}]") for i, entry in enumerate(spec)]
    return A.Compose([*steps, *extra, A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()])


def make_transform(entry: Mapping, where: str) -> A.BasicTransform:
    """One albumentations transform from `{name: ClassName, **kwargs}`; `where` names the entry in errors."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        example = "{name: HorizontalFlip, p: 0.5}"
        raise ConfigError(f"{where}: expected a mapping with a 'name' key like {example}; found {entry!r}")
    kwargs = dict(entry)
    name = kwargs.pop("name")
    if name in _APPENDED:
        raise ConfigError(f"{where}: found {name}, which is always appended (set data.mean/data.std); remove it")
    cls = transform_classes().get(name)
    if cls is None:
        raise ConfigError(f"{where}: unknown transform '{name}'; expected an albumentations class{_suggest(name)}")
    try:
        inspect.signature(cls).bind(**kwargs)  # albumentations>=2 only warns about unknown arguments
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: invalid arguments for {name} {kwargs}: {err}") from err


_APPENDED = ("Normalize", "ToTensorV2")


@functools.cache
def transform_classes() -> dict[str, type]:
    """Name -> class of every augmentation albumentations exports at top level (not its base classes)."""
    return {
        name: obj
        for name, obj in vars(A).items()
        if inspect.isclass(obj)
        and issubclass(obj, A.BasicTransform)
        and obj.__module__.startswith("albumentations.augmentations")
        and name not in _APPENDED
    }


def _suggest(name: str) -> str:
    """', did you mean X or Y?' for names close to `name` (case-insensitive), or ''."""
    by_lower = {known.lower(): known for known in transform_classes()}
    close = difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(by_lower[c] for c in close)}?" if close else " (e.g. HorizontalFlip)"


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Reseed a pipeline's own random state (albumentations>=2 keeps one per Compose, not the global one).

    DataLoader workers each get a copy of that state; without reseeding they would augment in lockstep.
    Older albumentations use the global `random`/numpy state, which torch already seeds per worker.
    """
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
