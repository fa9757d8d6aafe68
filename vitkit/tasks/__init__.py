"""One LightningModule per task: loss, optimiser/schedule, metrics and prediction output."""
from .classification import ImageClassifier
from .detection import ObjectDetector
from .segmentation import SemanticSegmenter
from .text import ImageCaptioner, Seq2Seq, VisualQA

__all__ = ["ImageClassifier", "ObjectDetector", "SemanticSegmenter", "Seq2Seq", "ImageCaptioner", "VisualQA"]
