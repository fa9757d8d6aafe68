"""Task heads that take encoder tokens (segmentation, detection), added by the task issues."""
from .detection import DetrHead, PredictionMLP  # noqa: E402

__all__ = ["DetrHead", "PredictionMLP"]
