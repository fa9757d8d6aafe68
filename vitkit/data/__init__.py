"""vitkit's data layer: LightningDataModules, dataset readers and albumentations pipelines (imports no model code)."""
from .captioning import CaptioningDataModule, read_captions, read_vqa
from .classification import (
    ArrayDataset,
    ClassificationDataModule,
    FileDataset,
    folder_classes,
    folder_samples,
    write_image_folder,
)
from .detection import DetectionDataModule
from .images import ImageStats, image_stats, list_images, load_rgb, scan_images
from .numbers import NumbersConfig, generate_numbers
from .segmentation import SegmentationDataModule, load_mask, reduce_zero_label
from .seq2seq import Seq2SeqDataModule
from .shapes import ShapesConfig, generate_shapes, render_scene
from .text import TextTokenizer, read_pairs
from .transforms import (
    DEFAULT_TRANSFORMS,
    FolderPipeline,
    build_transforms,
    choose_folder_pipeline,
    cifar_transforms,
    digits_transforms,
    imagefolder_transforms,
    make_transform,
    seed_transform,
)
from .vqa import VQADataModule

__all__ = [
    "ArrayDataset",
    "ClassificationDataModule",
    "DetectionDataModule",
    "DEFAULT_TRANSFORMS",
    "FileDataset",
    "FolderPipeline",
    "ImageStats",
    "choose_folder_pipeline",
    "image_stats",
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
    "write_image_folder",
    "read_captions",
    "read_vqa",
]
