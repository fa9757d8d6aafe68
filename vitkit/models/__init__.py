"""Encoders and heads built on vitkit.nn, with a registry of named configs."""
# imported to register their models: the ViT and text configs (seq2seq, vit), the detectors (detr, yolos; family
# "detection") and the segmenters (segmenter; family "segmentation")
from . import detr, segmenter, seq2seq, vit, yolos  # noqa: F401
from .captioner import CaptionTransformer, VQATransformer
from .detr import DetrViT
from .encoders import build_encoder
from .registry import create_model, list_models, register_model
from .seq2seq import Seq2SeqTransformer, TextDecoder, TextEncoder
from .vit import VisionTransformer
from .yolos import YOLOS

__all__ = [
    "create_model", "list_models", "register_model", "build_encoder", "VisionTransformer", "Seq2SeqTransformer",
    "TextDecoder", "TextEncoder", "CaptionTransformer", "VQATransformer", "DetrViT", "YOLOS",
]
