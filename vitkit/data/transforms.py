"""Albumentations pipelines: the default augmentations per dataset family and pipelines built from YAML lists."""
from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from vitkit.errors import ConfigError


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


DEFAULT_TRANSFORMS = {
    "digits": digits_transforms,
    "mnist": digits_transforms,
    "fashion_mnist": digits_transforms,
    "cifar10": cifar_transforms,
    "cifar100": cifar_transforms,
    "imagefolder": imagefolder_transforms,
}


def build_transforms(
    spec: Sequence[Mapping] | None,
    default: Sequence[A.BasicTransform],
    field: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> A.Compose:
    """A pipeline from a YAML list, or `default` when `spec` is None; Normalize + ToTensorV2 are always appended.

    Args:
        spec: entries like `{name: HorizontalFlip, p: 0.5}`: `name` is an albumentations class, the other
            keys its keyword arguments. None means `default`; an empty list means no augmentation.
        default: the transforms used when `spec` is None.
        field: config field of `spec`, used in error messages (e.g. "data.train_transforms").
        mean: per-channel mean of Normalize, for pixel values scaled to 0..1.
        std: per-channel standard deviation of Normalize.

    Returns:
        A Compose mapping `image=` an (H, W, 3) uint8 array to a (3, H, W) float32 tensor.
    """
    if spec is None:
        steps = list(default)
    elif isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ConfigError(f"{field}: expected a list like [{{name: HorizontalFlip, p: 0.5}}]; found {spec!r}")
    else:
        steps = [make_transform(entry, where=f"{field}[{i}]") for i, entry in enumerate(spec)]
    return A.Compose([*steps, A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()])


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
