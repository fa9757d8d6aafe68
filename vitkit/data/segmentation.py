"""Semantic-segmentation data: one LightningDataModule for the embedded shapes scenes, image/mask folders,
ADE20K (SceneParsing `ADEChallengeData2016`) and Pascal VOC 2012, with joint image+mask albumentations
pipelines (random scale, pad with the ignore value, random crop, flip) as in mmsegmentation's recipes."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from ..errors import DataError, DatasetNotFoundError, require
from .base import VitkitDataModule
from .images import list_images, load_rgb
from .segmentation_io import (  # noqa: F401  (the file readers moved to segmentation_io; old import path still works)
    _MASK_MODES,
    SegSample,
    _orphan_masks,
    check_mask,
    load_mask,
    pair_folder,
    read_class_names,
    reduce_zero_label,
)
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ShapesConfig, generate_shapes
from .transforms import build_transforms

log = logging.getLogger("vitkit")

SegDatasetName = Literal["shapes", "folder", "ade20k", "voc"]
Split = Literal["train", "val", "test", "predict"]


# The 150 SceneParsing classes in label order 1..150 (0 is "other", ignored after reduce_zero_label).
ADE20K_CLASSES = tuple(
    "wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|door|table|"
    "mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|armchair|seat|fence|"
    "desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|signboard|chest of drawers|counter|sand|sink|"
    "skyscraper|fireplace|refrigerator|grandstand|path|stairs|runway|case|pool table|pillow|screen door|stairway|"
    "river|bridge|bookcase|blind|coffee table|toilet|flower|book|hill|bench|countertop|stove|palm|kitchen island|"
    "computer|swivel chair|boat|bar|arcade machine|hovel|bus|towel|light|truck|tower|chandelier|awning|streetlight|"
    "booth|television receiver|airplane|dirt track|apparel|pole|land|bannister|escalator|ottoman|bottle|buffet|"
    "poster|stage|van|ship|fountain|conveyer belt|canopy|washer|plaything|swimming pool|stool|barrel|basket|"
    "waterfall|tent|bag|minibike|cradle|oven|ball|food|step|tank|trade name|microwave|pot|animal|bicycle|lake|"
    "dishwasher|screen|blanket|sculpture|hood|sconce|vase|traffic light|tray|ashcan|fan|pier|crt screen|plate|"
    "monitor|bulletin board|shower|radiator|glass|clock|flag".split("|")
)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
ADE20K_FOLDER = "ADEChallengeData2016"
_ADE_SPLITS = {"train": "training", "val": "validation"}


# ---------------------------------------------------------------------------------------------- datasets
class SegmentationDataset(Dataset):
    """(image, mask) files -> {"image": (3, H, W) float32, "mask": (H, W) int64, "path": str}, after the joint
    pipeline `transform`. Every mask is checked against its image and the class count when it is loaded."""

    def __init__(self, samples: list[SegSample], transform: A.Compose, num_classes: int, ignore_index: int = 255,
                 reduce_zero_label: bool = False, hint: str = "") -> None:
        self.samples = samples
        self.transform = transform
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.hint = hint

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked (H, W, 3) uint8 image and (H, W) uint8 mask of one sample, before any transform."""
        image_path, mask_path = self.samples[index]
        image, mask = load_rgb(image_path), load_mask(mask_path)
        if self.reduce_zero_label:
            mask = reduce_zero_label(mask)
        check_mask(mask, mask_path, image.shape[:2], image_path, self.num_classes, self.ignore_index, self.hint)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": torch.as_tensor(out["mask"]).long(), "path": self.samples[index][0]}


class ImageDataset(Dataset):
    """Images without masks (predict): {"image": (3, H, W) float32, "path": str}."""

    def __init__(self, paths: list[str], transform: A.Compose) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(image=load_rgb(self.paths[index]))["image"], "path": self.paths[index]}


def collate_segmentation(batch: list[dict]) -> dict:
    """Stack images (and masks) when they share one size, else keep lists (evaluation at native resolution)."""
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        same = isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values)
        out[key] = torch.stack(values) if same else values
    return out




# ---------------------------------------------------------------------------------------------- transforms
def segmentation_transforms(img_size: int, train: bool, scale_range: Sequence[float] = (0.5, 2.0),
                            ignore_index: int = 255) -> list[A.BasicTransform]:
    """mmsegmentation's training recipe on image and mask together: short side to `img_size`, random scale in
    `scale_range`, pad to `img_size` (image with 0, mask with the ignore value), random `img_size` crop,
    horizontal flip, photometric jitter. Evaluation: nothing (images keep their size; the task resizes
    the image for the network and scores the logits at the mask's resolution)."""
    if not train:
        return []
    lo, hi = scale_range
    return [
        A.SmallestMaxSize(max_size=img_size),
        A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0),
        A.PadIfNeeded(min_height=img_size, min_width=img_size, border_mode=cv2.BORDER_CONSTANT, fill=0,
                      fill_mask=ignore_index),
        A.RandomCrop(height=img_size, width=img_size),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
    ]


# ---------------------------------------------------------------------------------------------- the data module
class SegmentationDataModule(VitkitDataModule):
    """Semantic-segmentation data with joint image+mask augmentation and readable errors.

    Train batches are dicts: ``image`` float32 (B, 3, img_size, img_size) normalised with `mean`/`std`,
    ``mask`` int64 (B, img_size, img_size) with `ignore_index` on padding and unlabelled pixels, ``path``
    (B file names). Validation/test batches hold images at their own size (stacked when a batch shares one,
    else lists) and full-resolution masks; predict batches have ``image`` and ``path`` only.

    Args:
        dataset: "shapes" generates the embedded procedural scenes (64x64, background + circle, square,
            triangle, star) under `root` on first use; "folder" reads `<root>/classes.txt` and
            `<root>/{train,val,test}/{images,masks}/` (no val: split off train; no test: test is val);
            "ade20k" reads `<root>/ADEChallengeData2016/{images,annotations}/{training,validation}` (150 classes,
            test is validation); "voc" reads Pascal VOC 2012 through torchvision from
            `<root>/VOCdevkit/VOC2012` (21 classes with background, train/val lists, test is val).
        root: data folder (see datasets/README.md); for "folder", the dataset folder itself.
        download: "voc" only: fetch VOC 2012 through torchvision in `prepare_data()` (needs network, 2 GB).
        img_size: side of the square training crops (and of the network's windows at test time).
        batch_size: images per training batch; evaluation uses `eval_batch_size`.
        eval_batch_size: images per validation/test/predict batch (None: `batch_size`).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: "folder" without `val/`: share of `train/` held out (seeded).
        seed: seed of that split.
        ignore_index: mask value that is not scored (and fills padding).
        reduce_zero_label: map label 0 to `ignore_index` and shift the rest down by one (None: on for ade20k).
        scale_range: random scale factors of the default training pipeline, relative to short side = img_size.
        train_transforms: albumentations steps applied to image and mask together, as
            `[{name: RandomScale, scale_limit: [-0.5, 1.0], p: 1.0}, ...]`; None keeps the default above.
            Normalize and ToTensorV2 are always appended; pad masks with `fill_mask: <ignore_index>`.
        eval_transforms: the same for validation/test/predict (None: none; images keep their size).
        mean: per-channel mean for Normalize (pixel values scaled to 0..1).
        std: per-channel standard deviation for Normalize.
        shapes: "shapes" only: ShapesConfig fields to change (num_train, num_val, num_test, seed, min_shapes,
            ...); a non-default set is written to its own `shapes-<hash>` folder beside `shapes/`.
        predict_dir: folder of images to predict on (recursively); None predicts on the test split.
    """

    def __init__(
        self,
        dataset: SegDatasetName = "shapes",
        root: str = "datasets",
        download: bool = False,
        img_size: int = 64,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        ignore_index: int = 255,
        reduce_zero_label: bool | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        train_transforms: list[dict] | None = None,
        eval_transforms: list[dict] | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        shapes: dict[str, int] | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_hparams(self.hparams)
        self.shapes_config = ShapesConfig.parse(shapes)
        self._class_names = self._read_class_names()
        if reduce_zero_label is None:
            reduce_zero_label = dataset == "ade20k"
        self.reduce_zero_label = reduce_zero_label
        default = segmentation_transforms(img_size, True, scale_range, ignore_index)
        self.train_transform = build_transforms(train_transforms, default, "data.train_transforms", mean, std)
        self.eval_transform = build_transforms(eval_transforms, [], "data.eval_transforms", mean, std)

    # -- what the task needs to know (linked by the CLI) --
    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def img_size(self) -> int:
        return self.hparams.img_size

    @property
    def ignore_index(self) -> int:
        return self.hparams.ignore_index

    @property
    def dataset_root(self) -> str:
        """The folder the files are read from."""
        h = self.hparams
        if h.dataset == "shapes":
            return self.shapes_config.folder(os.path.join(h.root, "shapes"))
        if h.dataset == "ade20k":
            nested = os.path.join(h.root, ADE20K_FOLDER)
            return nested if os.path.isdir(nested) or not os.path.isdir(os.path.join(h.root, "images")) else h.root
        return h.root

    # -- Lightning hooks --
    def prepare_data(self) -> None:
        h = self.hparams
        if h.dataset == "shapes":
            self._generate_shapes()
        elif h.dataset == "voc" and h.download:
            for image_set in ("train", "val"):
                self._voc(image_set, download=True)

    def check(self, splits: Sequence[str], limit: int | None = None, workers: int | None = None):
        """`vitkit check-data` of these splits: every file read as training reads it (see `vitkit.checkdata`)."""
        from ..checkdata import check_segmentation

        return check_segmentation(self, splits, limit, workers)

    def batch_size_for(self, split: str) -> int:
        h = self.hparams
        return h.batch_size if split == "train" else (h.eval_batch_size or h.batch_size)

    def drop_last(self, split: str, dataset: Dataset) -> bool:
        return split == "train" and len(dataset) > self.hparams.batch_size

    def collate_fn(self, split: str):
        return collate_segmentation

    # -- building the splits --
    def build_dataset(self, split: str) -> Dataset:
        h = self.hparams
        if split == "predict":
            paths = list_images(h.predict_dir) if h.predict_dir else [p for p, _ in self._samples("test")]
            return ImageDataset(paths, self.eval_transform)
        transform = self.train_transform if split == "train" else self.eval_transform
        hint = f" (classes.txt lists {self.num_classes} classes)" if h.dataset in ("folder", "shapes") else ""
        if not self.reduce_zero_label and h.dataset in ("folder", "ade20k"):
            hint += "; ADE20K-style masks with 0 = unlabelled need data.reduce_zero_label: true"
        return SegmentationDataset(self._samples(split), transform, self.num_classes, h.ignore_index,
                                   self.reduce_zero_label, hint)

    def _samples(self, split: str) -> list[SegSample]:
        dataset = self.hparams.dataset
        if dataset == "shapes":
            self._generate_shapes()
            return self._folder_split(split)
        if dataset == "folder":
            return self._folder_split(split)
        if dataset == "ade20k":
            return self._ade20k(split)
        voc = self._voc("train" if split == "train" else "val")
        return list(zip(voc.images, voc.masks))

    def _generate_shapes(self) -> None:
        root = self.dataset_root
        if not os.path.isfile(os.path.join(root, "meta.json")):
            log.info("generating the shapes dataset under %s (first use)", root)
        generate_shapes(root, self.shapes_config)

    def _folder_split(self, split: str) -> list[SegSample]:
        """A split from its own folder if present; else test is val, and val is split off train."""
        root = self.dataset_root
        if split != "train" and os.path.isdir(os.path.join(root, split)):
            return self._folder(split)
        if split == "test":
            return self._folder_split("val")
        train = self._folder("train")
        if os.path.isdir(os.path.join(root, "val")):
            return train
        n_val = round(self.hparams.val_fraction * len(train))
        if not 0 < n_val < len(train):
            raise DataError(
                f"{os.path.join(root, 'train')}: cannot hold out {n_val} of {len(train)} image(s) for validation; "
                "expected a data.val_fraction that leaves images on both sides, or a val/ folder"
            )
        order = np.random.default_rng(self.hparams.seed).permutation(len(train))
        held = np.sort(order[:n_val]) if split == "val" else np.sort(order[n_val:])
        return [train[i] for i in held]

    def _folder(self, split: str) -> list[SegSample]:
        folder = os.path.join(self.dataset_root, split)
        images, masks = os.path.join(folder, "images"), os.path.join(folder, "masks")
        if not os.path.isdir(images):
            raise DatasetNotFoundError(
                f"{images}: folder not found; expected <root>/{split}/images/ and <root>/{split}/masks/ "
                "(see datasets/README.md)"
            )
        return pair_folder(images, masks)

    def _ade20k(self, split: str) -> list[SegSample]:
        root = self.dataset_root
        part = _ADE_SPLITS.get(split, "validation")
        images = os.path.join(root, "images", part)
        if not os.path.isdir(images):
            raise DatasetNotFoundError(
                f"ADE20K not found under '{self.hparams.root}' (data.root); expected {images} with JPEGs and "
                f"{os.path.join(root, 'annotations', part)} with PNG masks (unzip ADEChallengeData2016.zip there, "
                "see datasets/README.md)"
            )
        return pair_folder(images, os.path.join(root, "annotations", part))

    def _voc(self, image_set: str, download: bool = False) -> torchvision.datasets.VOCSegmentation:
        root = self.hparams.root
        try:
            return torchvision.datasets.VOCSegmentation(root, year="2012", image_set=image_set, download=download)
        except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found or corrupted ..."
            raise DatasetNotFoundError(
                f"Pascal VOC 2012 not found under '{root}' (data.root); "
                f"expected {os.path.join(root, 'VOCdevkit', 'VOC2012')} "
                f"with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{image_set}.txt. "
                "Set data.download: true "
                f"to fetch it (needs network) or place the files there (see datasets/README.md) [torchvision: {err}]"
            ) from err

    def _read_class_names(self) -> list[str]:
        dataset = self.hparams.dataset
        if dataset == "shapes":
            return list(SHAPES_CLASSES)
        if dataset == "ade20k":
            return list(ADE20K_CLASSES)
        if dataset == "voc":
            return list(VOC_CLASSES)
        root = self.hparams.root
        if not os.path.isdir(root):
            raise DatasetNotFoundError(
                f"{root} (data.root): folder not found; expected classes.txt and train/images, train/masks"
            )
        return read_class_names(os.path.join(root, "classes.txt"))


def _check_hparams(h) -> None:
    """ConfigError for values the types do not rule out (LightningCLI checks types, direct calls do not)."""
    require(h.dataset in get_args(SegDatasetName), "data.dataset", h.dataset,
            f"one of {', '.join(get_args(SegDatasetName))}")
    require(h.img_size >= 1, "data.img_size", h.img_size, "a positive number of pixels")
    require(h.batch_size >= 1, "data.batch_size", h.batch_size, "a positive integer")
    require(h.eval_batch_size is None or h.eval_batch_size >= 1, "data.eval_batch_size", h.eval_batch_size,
            "a positive integer or null")
    require(h.num_workers >= 0, "data.num_workers", h.num_workers, "0 or more")
    require(0 < h.val_fraction < 1, "data.val_fraction", h.val_fraction, "a fraction strictly between 0 and 1")
    require(0 <= h.ignore_index <= 255, "data.ignore_index", h.ignore_index, "a mask value in 0..255 (usually 255)")
    require(len(h.scale_range) == 2 and 0 < h.scale_range[0] <= h.scale_range[1], "data.scale_range", h.scale_range,
             "two factors 0 < low <= high, e.g. [0.5, 2.0]")
    require(len(h.mean) == 3, "data.mean", h.mean, "3 values, one per RGB channel")
    require(len(h.std) == 3 and min(h.std) > 0, "data.std", h.std, "3 positive values, one per RGB channel")
    require(h.dataset == "shapes" or not h.shapes, "data.shapes", h.shapes, "null unless data.dataset is shapes")
