"""vitkit's data layer: LightningDataModules, dataset readers and albumentations pipelines (imports no model code)."""
from .classification import ArrayDataset, ClassificationDataModule, FileDataset, folder_classes, folder_samples
from .detection import DetectionDataModule
from .images import list_images, load_rgb, scan_images
from .segmentation import SegmentationDataModule, load_mask, reduce_zero_label
from .shapes import ShapesConfig, generate_shapes, render_scene
from .numbers import NumbersConfig, generate_numbers
from .text import Seq2SeqDataModule, TextTokenizer, read_pairs
from .captioning import CaptioningDataModule, VQADataModule, read_captions, read_vqa
from .transforms import (
    DEFAULT_TRANSFORMS,
    build_transforms,
    cifar_transforms,
    digits_transforms,
    imagefolder_transforms,
    make_transform,
    seed_transform,
)

__all__ = [
    "ArrayDataset",
    "ClassificationDataModule",
    "DetectionDataModule",
    "DEFAULT_TRANSFORMS",
    "FileDataset",
    "build_transforms",
    "cifar_transforms",
    "digits_transforms",
    "folder_classes",
    "folder_samples",
    "imagefolder_transforms",
    "list_images",
    "load_rgb",
    "make_transform",
    "scan_images",
    "SegmentationDataModule",
    "load_mask",
    "reduce_zero_label",
    "seed_transform",
    "ShapesConfig",
    "generate_shapes",
    "render_scene",
    "NumbersConfig",
    "generate_numbers",
    "Seq2SeqDataModule",
    "TextTokenizer",
    "read_pairs",
    "CaptioningDataModule",
    "VQADataModule",
    "read_captions",
    "read_vqa",
]
