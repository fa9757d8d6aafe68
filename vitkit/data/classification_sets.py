"""The in-memory classification sets: scikit-learn's digits and torchvision's MNIST, Fashion-MNIST and CIFAR as
uint8 arrays (class lists, where their files lie, loading) and the dataset serving them; and what every
classification set shares: its class names, the label map of a class subset, the seeded stratified split, the
collate of predict batches."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
import torchvision
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from ..errors import DataError, DatasetNotFoundError, require
from .folders import _as_rgb, folder_classes

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)


@dataclass(frozen=True)
class TorchvisionSource:
    """A dataset read through torchvision: its class there, its name for people, where its files lie under root."""

    cls_name: str
    title: str
    folder: str
    classes: tuple[str, ...]

    def missing_message(self, root: str) -> str:
        return (
            f"{self.title} not found under '{root}' (data.root); expected {os.path.join(root, self.folder)}. "
            "Set data.download: true to fetch it (needs network) or place the files there (see datasets/README.md)"
        )


TORCHVISION_SOURCES = {
    "mnist": TorchvisionSource("MNIST", "MNIST", os.path.join("MNIST", "raw"), DIGIT_CLASSES),
    "fashion_mnist": TorchvisionSource(
        "FashionMNIST", "Fashion-MNIST", os.path.join("FashionMNIST", "raw"), FASHION_MNIST_CLASSES
    ),
    "cifar10": TorchvisionSource("CIFAR10", "CIFAR-10", "cifar-10-batches-py", CIFAR10_CLASSES),
    "cifar100": TorchvisionSource("CIFAR100", "CIFAR-100", "cifar-100-python", CIFAR100_CLASSES),
}


class ArrayDataset(Dataset):
    """In-memory uint8 images, (N, H, W) gray or (N, H, W, 3) RGB; items are (image, label) or (image, name)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, names: list[str], transform: A.Compose, with_names: bool = False
    ) -> None:
        self.images, self.labels, self.names = images, labels, names
        self.transform = transform
        self.with_names = with_names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | str]:
        tensor = self.transform(image=_as_rgb(self.images[index]))["image"]  # (3, img_size, img_size) float32
        return tensor, self.names[index] if self.with_names else int(self.labels[index])


def _subset_label_map(classes: list[int] | None, names: list[str], dataset: str) -> np.ndarray | None:
    """Original label -> position in `classes` (-1 for the others), or None to keep all; checks data.classes."""
    if classes is None:
        return None
    valid = f"distinct class indices in 0..{len(names) - 1} (the {len(names)} classes of {dataset})"
    require(len(classes) > 0, "data.classes", classes, f"a non-empty list of {valid}, or null for all")
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(names)]
    require(not bad, "data.classes", classes, f"{valid}; out of range or not an integer: {bad}")
    dupes = sorted({c for c in classes if list(classes).count(c) > 1})
    require(not dupes, "data.classes", classes, f"{valid}; repeated: {dupes}")
    label_map = np.full(len(names), -1, dtype=np.int64)
    label_map[list(classes)] = np.arange(len(classes))
    return label_map


def _class_names(dataset: str, root: str) -> list[str]:
    if dataset == "digits":
        return list(DIGIT_CLASSES)
    if dataset == "imagefolder":
        return folder_classes(os.path.join(root, "train"))
    return list(TORCHVISION_SOURCES[dataset].classes)


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as uint8 images (1797, 8, 8) in 0..255 and int64 labels (1797,)."""
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    return images, digits.target.astype(np.int64)


def _load_torchvision(dataset: str, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Official train or test set as uint8 images, (N, H, W) or (N, H, W, 3), and int64 labels (N,)."""
    source = TORCHVISION_SOURCES[dataset]
    cls = getattr(torchvision.datasets, source.cls_name)
    try:
        data = cls(root, train=train, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found [or corrupted]. You can use download=True ..."
        raise DatasetNotFoundError(f"{source.missing_message(root)} [torchvision: {err}]") from err
    except Exception as err:  # noqa: BLE001 - a damaged file: MNIST's idx parser raises ValueError, AssertionError ...
        folder = os.path.join(root, source.folder)
        raise DataError(
            f"{source.title}: the files under {folder} cannot be read ({type(err).__name__}: {err}); expected the "
            "official files, complete: delete them and set data.download: true, or copy them again"
        ) from err
    return np.asarray(data.data), np.asarray(data.targets, dtype=np.int64)


def stratified_split(
    labels: np.ndarray, n_held: int, seed: int, what: str, field: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of positions 0..len(labels)-1, stratified by label, into sorted (kept, held out) index arrays.

    `n_held` positions are held out; `what` and `field` name the data and the config field in errors.
    """
    try:
        keep, held = train_test_split(np.arange(len(labels)), test_size=n_held, random_state=seed, stratify=labels)
    except ValueError as err:
        raise DataError(
            f"{what}: cannot hold out {n_held} of {len(labels)} images with a split stratified by class ({err}); "
            f"expected a {field} that leaves at least one image per class on each side"
        ) from err
    return np.sort(keep), np.sort(held)


def _collate_named(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """Predict batches: images (B, 3, H, W) and a list of B names (default_collate would give a tuple)."""
    images, names = zip(*batch)
    return torch.stack(images), list(names)
