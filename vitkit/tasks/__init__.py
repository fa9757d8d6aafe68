"""One LightningModule per task: loss, optimiser/schedule, metrics and prediction output."""
from .classification import ImageClassifier
from .segmentation import SemanticSegmenter

__all__ = ["ImageClassifier", "SemanticSegmenter"]
