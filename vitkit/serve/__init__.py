"""`vitkit serve`: an HTTP prediction server (FastAPI + uvicorn, with micro-batching) for a task checkpoint or an
exported model."""
from .app import create_app
from .batching import MicroBatcher
from .predictor import ExportedPredictor, TorchPredictor, decode_image, load_predictor

__all__ = ["ExportedPredictor", "MicroBatcher", "TorchPredictor", "create_app", "decode_image", "load_predictor"]
