"""Model export: `vitkit export` writes a trained task as ONNX or a torch.export program with its preprocessing,
checked against the eager model; `ExportedModel` runs the result."""
from .formats import ExportError
from .runtime import ExportedModel

__all__ = ["ExportError", "ExportedModel"]
