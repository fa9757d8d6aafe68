"""One LightningModule per task: loss, optimiser/schedule, metrics and prediction output."""
from .captioning import ImageCaptioner
from .classification import ImageClassifier
from .detection import ObjectDetector
from .segmentation import SemanticSegmenter
from .seq2seq import Seq2Seq
from .vqa import VisualQA

__all__ = ["ImageClassifier", "ObjectDetector", "SemanticSegmenter", "Seq2Seq", "ImageCaptioner", "VisualQA"]
