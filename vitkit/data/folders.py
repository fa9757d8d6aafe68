"""Image folders for classification, `<root>/<split>/<class>/<image>`: listing their classes and files, the
dataset that decodes the files (on every access, or once into memory), reporting the unreadable files skipped,
and writing in-memory sets out as such folders."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import albumentations as A
import numpy as np
import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import ConfigError, DataError, DatasetNotFoundError
from .images import decode_all, load_rgb

if TYPE_CHECKING:
    from .classification import ClassificationDataModule

log = logging.getLogger("vitkit")

Sample = tuple[str, int]  # (image path, class index)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) gray -> (H, W, 3); an (H, W, 3) image is returned as it is."""
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


class FileDataset(Dataset):
    """Image files decoded by `load_rgb` on every access, or once into memory by `cache()`; items are
    (image, label) or (image, path)."""

    def __init__(self, samples: list[Sample], transform: A.Compose, with_paths: bool = False) -> None:
        self.samples = samples
        self.transform = transform
        self.with_paths = with_paths
        self.images: np.ndarray | list[np.ndarray] | None = None  # decoded uint8 images, once cached

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | str]:
        path, label = self.samples[index]
        image = load_rgb(path) if self.images is None else _as_rgb(self.images[index])
        tensor = self.transform(image=image)["image"]  # (H, W, 3) uint8 -> (3, img_size, img_size)
        return tensor, path if self.with_paths else label

    def cache(self, workers: int | None = None) -> None:
        """Decode every file once (threads; PIL releases the GIL) and serve the pixels from memory from now on:
        gray images take one byte a pixel, and a folder of one image size becomes one array, which DataLoader
        worker processes share with this one instead of copying."""
        if self.images is not None:
            return
        images = decode_all([path for path, _ in self.samples], workers)
        same = len({(im.shape, im.dtype) for im in images}) == 1
        self.images = np.stack(images) if same else images


def folder_classes(directory: str) -> list[str]:
    """Sorted class sub-folder names of an ImageFolder split; hidden ones (.ipynb_checkpoints ...) are ignored."""
    if not os.path.isdir(directory):
        raise DatasetNotFoundError(
            f"{directory}: folder not found; expected ImageFolder data laid out as <data.root>/train/<class>/<image> "
            "(see datasets/README.md)"
        )
    try:
        classes, _ = find_classes(directory)
    except FileNotFoundError:
        classes = []
    classes = [name for name in classes if not name.startswith(".")]
    if not classes:
        raise DatasetNotFoundError(f"{directory}: no class folders found; expected one sub-folder of images per class")
    return classes


def folder_samples(directory: str, class_to_idx: dict[str, int]) -> list[Sample]:
    """(path, class index) of every image under `directory`/<class>/, sorted; classes must be among `class_to_idx`."""
    classes = folder_classes(directory)
    unknown = sorted(set(classes) - set(class_to_idx))
    if unknown:
        raise DataError(
            f"{directory}: class folder(s) {unknown} are not among the training classes; "
            f"expected a subset of {sorted(class_to_idx)}"
        )
    try:
        return make_dataset(directory, {name: class_to_idx[name] for name in classes}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without images
        raise DatasetNotFoundError(f"{directory}: {err}") from err


@rank_zero_only
def _report_skipped(skipped: list[tuple[str, str]], shown: int = 5) -> None:
    listed = "; ".join(f"{path} ({reason})" for path, reason in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    message = f"skipped {len(skipped)} unreadable image(s) (data.skip_corrupt: true): {listed}{more}"
    log.warning(message)
    rank_zero_warn(message)


def write_image_folder(
    dm: ClassificationDataModule, root: str, splits: Sequence[str] = ("train", "val", "test")
) -> dict[str, int]:
    """Write the splits of an in-memory dataset (digits, MNIST, CIFAR ...) as PNG class folders,
    `<root>/<split>/<class>/<index>.png`, the layout `dataset: imagefolder` reads: to train a dataset through
    the user-data path, on the very split the in-memory run uses. Class folders sort in label order (names
    that would not are prefixed with their index). Returns the images written per split."""
    if dm.hparams.dataset == "imagefolder":
        raise ConfigError(f"write_image_folder: data.dataset is already an image folder ({dm.hparams.root})")
    safe = [re.sub(r"[^\w.-]+", "_", name) for name in dm.class_names]
    if sorted(safe) != safe or len(set(safe)) != len(safe):
        width = len(str(len(safe) - 1))
        safe = [f"{i:0{width}d}_{name}" for i, name in enumerate(safe)]
    written = {}
    for split in splits:
        images, labels, names = dm._array_split(split)
        for folder in {safe[label] for label in labels}:
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        width = len(str(max((int(name.rsplit("/", 1)[-1]) for name in names), default=0)))
        for image, label, name in zip(images, labels, names):
            index = int(name.rsplit("/", 1)[-1])  # "<dataset>/<split>/<index into the source set>"
            Image.fromarray(image).save(os.path.join(root, split, safe[label], f"{index:0{width}d}.png"))
        written[split] = len(labels)
    return written
