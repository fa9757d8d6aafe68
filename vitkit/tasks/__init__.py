"""One LightningModule per task: loss, optimiser/schedule, metrics and prediction output."""
from .classification import ImageClassifier
from .detection import ObjectDetector
from .segmentation import SemanticSegmenter

__all__ = ["ImageClassifier", "ObjectDetector", "SemanticSegmenter"]
