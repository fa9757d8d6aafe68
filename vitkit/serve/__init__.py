"""`vitkit serve`: an HTTP prediction server (FastAPI + uvicorn, with micro-batching) for a task checkpoint or an
exported model."""
from .app import create_app
from .batching import MicroBatcher
from .predictor import RuntimePredictor, Upload, decode_image, load_predictor

__all__ = ["MicroBatcher", "RuntimePredictor", "Upload", "create_app", "decode_image", "load_predictor"]
