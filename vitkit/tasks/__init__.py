"""One LightningModule per task: loss, optimiser/schedule, metrics and prediction output."""
from .classification import ImageClassifier

__all__ = ["ImageClassifier"]
