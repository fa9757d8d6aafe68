"""vitkit: a Vision Transformer toolkit — one transformer core, task heads, Lightning tasks and a CLI."""
from .models import VisionTransformer, create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["VisionTransformer", "create_model", "list_models", "register_model", "__version__"]
