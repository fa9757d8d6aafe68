"""Encoders and heads built on vitkit.nn, with a registry of named configs."""
from . import vit  # noqa: F401  (registers the ViT configs)
from .registry import create_model, list_models, register_model
from .vit import VisionTransformer

__all__ = ["create_model", "list_models", "register_model", "VisionTransformer"]
