"""Encoders and heads built on vitkit.nn, with a registry of named configs."""
from . import seq2seq, vit  # noqa: F401  (register the ViT and text configs)
from . import detr, yolos  # noqa: F401  (register the detectors, family "detection")
from . import segmenter  # noqa: F401  (register the segmenters, family "segmentation")
from .registry import create_model, list_models, register_model
from .seq2seq import Seq2SeqTransformer, TextDecoder, TextEncoder
from .captioner import CaptionTransformer, VQATransformer
from .vit import VisionTransformer
from .detr import DetrViT
from .yolos import YOLOS

__all__ = [
    "create_model", "list_models", "register_model", "VisionTransformer", "Seq2SeqTransformer", "TextDecoder",
    "TextEncoder", "CaptionTransformer", "VQATransformer", "DetrViT", "YOLOS",
]
