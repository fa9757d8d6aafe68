"""Image classification data: one LightningDataModule for digits, MNIST, Fashion-MNIST, CIFAR and image folders."""
from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from typing import Literal, get_args

import albumentations as A
import numpy as np
import torchvision
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import Dataset

from ..errors import DataError, DatasetNotFoundError, require
from .base import VitkitDataModule
from .classification_sets import (  # noqa: F401 - names not used here stay importable from here, as before the split
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DIGIT_CLASSES,
    FASHION_MNIST_CLASSES,
    TORCHVISION_SOURCES,
    ArrayDataset,
    TorchvisionSource,
    _class_names,
    _collate_named,
    _digits_arrays,
    _load_torchvision,
    _subset_label_map,
    stratified_split,
)
from .folders import (  # noqa: F401 - likewise
    FileDataset,
    Sample,
    _as_rgb,
    _report_skipped,
    folder_classes,
    folder_samples,
    write_image_folder,
)
from .images import ImageStats, image_stats, list_images, scan_images
from .loading import STAGE_SPLITS
from .transforms import (
    DEFAULT_TRANSFORMS,
    AutoAugment,
    FolderPipeline,
    auto_augment_step,
    build_transforms,
    choose_folder_pipeline,
)

log = logging.getLogger("vitkit")

DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"]
CacheMode = Literal["auto", "ram", "none"]
_CACHE_MODES = get_args(CacheMode)
Split = Literal["train", "val", "test", "predict"]


class ClassificationDataModule(VitkitDataModule):
    """Image classification data with seeded splits, albumentations pipelines and readable errors.

    Batches of the train/val/test loaders are `(images, labels)`: float32 (B, 3, img_size, img_size)
    normalised with `mean`/`std`, and int64 (B,). Predict batches are `(images, names)` with one string per
    image: the file path, or `"<dataset>/<split>/<index>"` for in-memory data, where index points into the
    source set (scikit-learn's `load_digits()`, or torchvision's official train/test set).

    Args:
        dataset: "digits" is scikit-learn's bundled 8x8 digits (1797 images, no download, split
            train/val/test here); "mnist", "fashion_mnist", "cifar10", "cifar100" are read by torchvision from
            `root` (val is split off the official train set, test is the official test set); "imagefolder"
            reads `<root>/train/<class>/*` plus optional `<root>/val` and `<root>/test` with the same layout
            (no val: split off train; no test: test is val).
        root: data folder; see datasets/README.md for what each dataset expects there.
        download: fetch a torchvision dataset into `root` in `prepare_data()` (needs network).
        img_size: side of the square images in a batch.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: share held out for validation: of all digits, of the official train set, or of
            `<root>/train` when there is no `<root>/val`. Stratified by class.
        test_fraction: share of all digits held out for testing (digits only; the others have a test set).
        seed: seed of the splits; the same seed gives the same split on every run.
        classes: keep only these classes, given as indices into the dataset's class list (digits 0..9, the
            torchvision class order, or the sorted folder names), relabelled 0..k-1 in the given order;
            `num_classes` and `class_names` describe the subset. None keeps every class. For transfer
            experiments, e.g. pretrain on digits [0, 1, 2, 3, 4] and fine-tune on [5, 6, 7, 8, 9].
        train_transforms: albumentations steps for training, e.g. `[{name: HorizontalFlip, p: 0.5}]`; None
            keeps the dataset's default augmentation. Normalize and ToTensorV2 are always appended. An image
            folder's default is chosen from what it holds (`folder_pipeline`, logged with its reason): small
            images are resized whole and jittered lightly, photos get a random-resized crop; grayscale images
            are never flipped or colour-jittered (see `choose_folder_pipeline`).
        auto_augment: "randaugment" or "trivialaugment" adds torchvision's RandAugment / TrivialAugmentWide
            to the training pipeline (after `train_transforms`, before Normalize); "none" adds nothing.
        randaugment_magnitude: RandAugment magnitude, 0..30 (torchvision's scale).
        randaugment_ops: RandAugment operations per image.
        eval_transforms: the same for validation, test and predict; None resizes (and centre-crops photos).
        mean: per-channel mean for Normalize (pixel values scaled to 0..1).
        std: per-channel standard deviation for Normalize.
        skip_corrupt: image folders only: decode every file once in `setup()` and drop the unreadable ones,
            counting them in `skipped` and logging a warning. When False, an unreadable file raises
            CorruptImageError, naming it, when it is loaded.
        predict_dir: folder of images to predict on (searched recursively); None predicts on the test split.
        cache: image folders only: "ram" decodes the train/val/test images once in `setup()` and serves them
            from memory (one byte a pixel for gray images); "auto" does so when the decoded folder fits in
            `cache_budget_mb`, and logs the choice; "none" decodes every image on every access. Each process of a
            multi-process run holds its own copy; DataLoader workers share the main process's.
        cache_budget_mb: the most memory "auto" may fill with decoded images, in MiB.
    """

    def __init__(
        self,
        dataset: DatasetName = "digits",
        root: str = "datasets",
        download: bool = False,
        img_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        classes: list[int] | None = None,
        train_transforms: list[dict] | None = None,
        eval_transforms: list[dict] | None = None,
        auto_augment: AutoAugment = "none",
        randaugment_magnitude: int = 9,
        randaugment_ops: int = 2,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        skip_corrupt: bool = False,
        predict_dir: str | None = None,
        cache: CacheMode = "auto",
        cache_budget_mb: float = 1024.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_hparams(self.hparams)
        all_names = _class_names(dataset, root)
        self._label_map = _subset_label_map(classes, all_names, dataset)  # original label -> new label, -1: dropped
        self._class_names = all_names if classes is None else [all_names[i] for i in classes]
        self._all_class_names = all_names
        self._auto_augment = auto_augment_step(auto_augment, randaugment_magnitude, randaugment_ops,
                                               "data.auto_augment")
        # An explicit pipeline is built (and checked) now; a folder's default waits for its images to be seen.
        self._train_transform = self._eval_transform = None
        if train_transforms is not None or dataset != "imagefolder":
            self._train_transform = self._build_transform(train=True)
        if eval_transforms is not None or dataset != "imagefolder":
            self._eval_transform = self._build_transform(train=False)
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of unreadable files dropped by skip_corrupt
        self._folders: dict[str, list[Sample]] = {}

    @property
    def train_transform(self) -> A.Compose:
        if self._train_transform is None:
            self._train_transform = self._build_transform(train=True)
        return self._train_transform

    @property
    def eval_transform(self) -> A.Compose:
        if self._eval_transform is None:
            self._eval_transform = self._build_transform(train=False)
        return self._eval_transform

    def _build_transform(self, train: bool) -> A.Compose:
        h = self.hparams
        spec, field = ((h.train_transforms, "data.train_transforms") if train
                       else (h.eval_transforms, "data.eval_transforms"))
        if spec is not None:
            default = []
        elif h.dataset == "imagefolder":
            default = self.folder_pipeline.train if train else self.folder_pipeline.eval
        else:
            default = DEFAULT_TRANSFORMS[h.dataset](h.img_size, train=train)
        return build_transforms(spec, default, field, h.mean, h.std, extra=self._auto_augment if train else ())

    @functools.cached_property
    def folder_stats(self) -> ImageStats:
        """Sizes, modes and colour of the training images of an image folder (a seeded sample of them)."""
        if self.hparams.dataset != "imagefolder":
            raise ValueError(f"folder_stats: data.dataset is {self.hparams.dataset!r}, not an image folder")
        return image_stats([path for path, _ in self._folder_split("train")], seed=self.hparams.seed)

    @functools.cached_property
    def folder_pipeline(self) -> FolderPipeline:
        """The default augmentation chosen for this image folder from `folder_stats`; logged once."""
        h = self.hparams
        choice = choose_folder_pipeline(self.folder_stats, h.img_size, auto_augment=h.auto_augment != "none")
        explicit = [f for f, spec in (("train", h.train_transforms), ("eval", h.eval_transforms)) if spec is not None]
        note = f" (data.{'/'.join(explicit)}_transforms given: used instead)" if explicit else ""
        _log_once(f"data: {h.root}: {self.folder_stats.describe()}. Default pipeline {choice.name}: {choice.reason}"
                  f"{note}. Set data.train_transforms / data.eval_transforms to choose another.")
        return choice

    def state_dict(self) -> dict:
        """The folder pipeline chosen, kept in checkpoints so that `vitkit explain` evaluates images as testing did."""
        chosen = self.__dict__.get("folder_pipeline")
        return {"folder_pipeline": chosen.name} if chosen is not None else {}

    def load_state_dict(self, state: dict) -> None:
        pass  # the choice is made again from the data; the stored name is for readers of the checkpoint

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def prepare_data(self) -> None:
        source = TORCHVISION_SOURCES.get(self.hparams.dataset)
        if source is None or not self.hparams.download:
            return
        cls = getattr(torchvision.datasets, source.cls_name)
        for train in (True, False):
            try:
                cls(self.hparams.root, train=train, download=True)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                message = source.missing_message(self.hparams.root)
                raise DatasetNotFoundError(f"{source.title}: download failed ({err}). {message}") from err

    def check(self, splits: Sequence[str], limit: int | None = None, workers: int | None = None):
        """`vitkit check-data` of these splits: every file read as training reads it (see `vitkit.checkdata`)."""
        from ..checkdata import check_classification

        return check_classification(self, splits, limit, workers)

    def setup(self, stage: str | None = None) -> None:
        n_skipped = len(self.skipped)
        self._in_setup = True  # the unreadable files of all the stage's splits are reported once, after them
        try:
            super().setup(stage)
        finally:
            self._in_setup = False
        if len(self.skipped) > n_skipped:
            _report_skipped(self.skipped[n_skipped:])
        if self.hparams.dataset == "imagefolder":
            self._cache(STAGE_SPLITS[stage])

    def _cache(self, splits: Sequence[str]) -> None:
        """Decode the folder splits of this stage into memory when data.cache says so (see `cache`)."""
        h = self.hparams
        datasets = [ds for ds in dict.fromkeys(self._datasets[s] for s in splits) if ds.images is None]
        if h.cache == "none" or not datasets:
            return
        n = sum(len(ds) for ds in datasets)
        need = n * self.folder_stats.mean_pixels * (1 if self.folder_stats.grayscale else 3) / 2**20
        if h.cache == "auto" and need > h.cache_budget_mb:
            _log_once(f"data.cache auto: {n} images would take ~{need:.0f} MiB decoded, over data.cache_budget_mb "
                      f"{h.cache_budget_mb:.0f}: decoding from disk on every access")
            return
        start = time.perf_counter()
        for ds in datasets:
            ds.cache()
        _log_once(f"data.cache {h.cache}: {n} images of {', '.join(splits)} decoded into memory (~{need:.1f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s")

    def collate_fn(self, split: str):
        return _collate_named if split == "predict" else None

    _in_setup = False

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of one split (scanned first with skip_corrupt; what is dropped is reported)."""
        n_skipped = len(self.skipped)
        dataset = self._build(split)
        if len(self.skipped) > n_skipped and not self._in_setup:
            _report_skipped(self.skipped[n_skipped:])
        return dataset

    def _build(self, split: str) -> Dataset:
        if split == "predict":
            return self._build_predict()
        transform = self.train_transform if split == "train" else self.eval_transform
        if self.hparams.dataset == "imagefolder":
            return FileDataset(self._folder_split(split), transform=transform)
        return ArrayDataset(*self._array_split(split), transform=transform)

    def _build_predict(self) -> Dataset:
        if self.hparams.predict_dir is not None:
            samples = self._drop_unreadable([(path, -1) for path in list_images(self.hparams.predict_dir)])
            return FileDataset(samples, transform=self.eval_transform, with_paths=True)
        if self.hparams.dataset == "imagefolder":
            return FileDataset(self._folder_split("test"), transform=self.eval_transform, with_paths=True)
        return ArrayDataset(*self._array_split("test"), transform=self.eval_transform, with_names=True)

    # --- in-memory datasets: digits and torchvision's ---

    def _array_split(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(images, labels, names) of one split."""
        dataset = self.hparams.dataset
        if dataset == "digits":
            (images, labels), indices = _digits_arrays(), self._digits_indices[split]
        elif split == "test":
            images, labels = self._official_test
            indices = np.arange(len(labels))
        else:
            (images, labels), indices = self._official_train, self._train_val_indices[split]
        if self._label_map is not None:  # data.classes: keep the chosen classes, relabelled
            indices = indices[self._label_map[labels[indices]] >= 0]
        names = [f"{dataset}/{split}/{i}" for i in indices]
        return images[indices], self._relabel(labels[indices]), names

    def _relabel(self, labels: np.ndarray) -> np.ndarray:
        return labels if self._label_map is None else self._label_map[labels]

    @functools.cached_property
    def _digits_indices(self) -> dict[str, np.ndarray]:
        """Stratified train/val/test indices into load_digits(); test_fraction and val_fraction of all images."""
        h = self.hparams
        _, labels = _digits_arrays()
        n_test, n_val = round(h.test_fraction * len(labels)), round(h.val_fraction * len(labels))
        rest, test = stratified_split(labels, n_test, seed=h.seed, what="digits", field="data.test_fraction")
        train, val = stratified_split(labels[rest], n_val, seed=h.seed, what="digits", field="data.val_fraction")
        return {"train": rest[train], "val": rest[val], "test": test}

    @functools.cached_property
    def _official_train(self) -> tuple[np.ndarray, np.ndarray]:
        return _load_torchvision(self.hparams.dataset, self.hparams.root, train=True)

    @functools.cached_property
    def _official_test(self) -> tuple[np.ndarray, np.ndarray]:
        return _load_torchvision(self.hparams.dataset, self.hparams.root, train=False)

    @functools.cached_property
    def _train_val_indices(self) -> dict[str, np.ndarray]:
        """Stratified split of the official train set: val_fraction of it for validation."""
        _, labels = self._official_train
        h = self.hparams
        n_val = round(h.val_fraction * len(labels))
        what = f"the {h.dataset} train set"
        train, val = stratified_split(labels, n_val, seed=h.seed, what=what, field="data.val_fraction")
        return {"train": train, "val": val}

    # --- image folders ---

    def _folder_split(self, split: str) -> list[Sample]:
        """Samples of one split from its own folder if it has one; else test is val, and val is split off train."""
        root = self.hparams.root
        if split != "train" and os.path.isdir(os.path.join(root, split)):
            return self._folder(split)
        if split == "test":
            return self._folder_split("val")
        train = self._folder("train")
        if os.path.isdir(os.path.join(root, "val")):
            return train
        labels = np.array([label for _, label in train])
        n_val = round(self.hparams.val_fraction * len(train))
        what = os.path.join(root, "train")
        keep, held = stratified_split(labels, n_val, seed=self.hparams.seed, what=what, field="data.val_fraction")
        return [train[i] for i in (keep if split == "train" else held)]

    def _folder(self, name: str) -> list[Sample]:
        """Samples of `<root>/<name>`, read (and with skip_corrupt, scanned) once."""
        if name not in self._folders:
            class_to_idx = {class_name: i for i, class_name in enumerate(self._all_class_names)}
            samples = folder_samples(os.path.join(self.hparams.root, name), class_to_idx)
            if self._label_map is not None:  # data.classes: keep the chosen classes, relabelled
                keep = self._label_map
                samples = [(path, int(keep[label])) for path, label in samples if keep[label] >= 0]
            kept = self._drop_unreadable(samples)
            if samples and not kept:
                raise DataError(f"{os.path.join(self.hparams.root, name)}: all {len(samples)} images are unreadable "
                                "(data.skip_corrupt: true dropped them); expected at least one readable image")
            self._folders[name] = kept
        return self._folders[name]

    def _drop_unreadable(self, samples: list[Sample]) -> list[Sample]:
        if not self.hparams.skip_corrupt:
            return samples
        good, bad = scan_images([path for path, _ in samples])
        self.skipped.extend(bad)
        readable = set(good)
        return [sample for sample in samples if sample[0] in readable]


def _check_hparams(h) -> None:
    """Raise ConfigError for values the types do not rule out (LightningCLI checks types, direct calls do not)."""
    require(h.dataset in DEFAULT_TRANSFORMS, "data.dataset", h.dataset, f"one of {', '.join(DEFAULT_TRANSFORMS)}")
    require(h.img_size >= 1, "data.img_size", h.img_size, "a positive number of pixels")
    require(h.batch_size >= 1, "data.batch_size", h.batch_size, "a positive integer")
    require(h.num_workers >= 0, "data.num_workers", h.num_workers, "0 or more")
    require(0 < h.val_fraction < 1, "data.val_fraction", h.val_fraction, "a fraction strictly between 0 and 1")
    require(0 < h.test_fraction < 1, "data.test_fraction", h.test_fraction, "a fraction strictly between 0 and 1")
    require(h.val_fraction + h.test_fraction < 1, "data.val_fraction + data.test_fraction",
             h.val_fraction + h.test_fraction, "less than 1, leaving images to train on")
    require(len(h.mean) == 3, "data.mean", h.mean, "3 values, one per RGB channel")
    require(len(h.std) == 3 and min(h.std) > 0, "data.std", h.std, "3 positive values, one per RGB channel")
    require(h.cache in _CACHE_MODES, "data.cache", h.cache, f"one of {', '.join(_CACHE_MODES)}")
    require(h.cache_budget_mb >= 0, "data.cache_budget_mb", h.cache_budget_mb, "0 or more MiB")



@rank_zero_only
def _log_once(message: str) -> None:
    log.info(message)
