"""What `vitkit serve` runs: a predictor decodes one uploaded image (in memory) into model input, and turns a
batch of such inputs into the rows `python train.py predict` writes for that task.

`TorchPredictor` rebuilds the task from its Lightning checkpoint (as `vitkit explain` does) and calls the task's
own `predict_step`; `ExportedPredictor` wraps `vitkit.export.runtime.ExportedModel` (an .onnx or .pt2 file).
"""
from __future__ import annotations

import io
import os
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

# the data layer's decoding, applied to bytes instead of a path (PIL opens either): any mode -> RGB uint8
from ..data.images import _decode, _to_rgb
from ..errors import CheckpointError, ConfigError

EXPORTED_SUFFIXES = (".onnx", ".pt2")


class ImageDecodeError(ValueError):
    """The uploaded bytes are not an image PIL can decode; the message names what was found."""


def decode_image(data: bytes, name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an uploaded file's bytes, decoded as the data modules decode files."""
    try:
        return _to_rgb(_decode(io.BytesIO(data)))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{name}: {err}; expected an image of at most {Image.MAX_IMAGE_PIXELS} pixels") from err
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ... by format
        raise ImageDecodeError(f"{name}: not a decodable image ({type(err).__name__}; {len(data)} bytes starting "
                               f"{data[:12]!r}); expected a PNG, JPEG, BMP, GIF, TIFF or WebP file") from err


class Predictor(Protocol):
    """The seam between the HTTP app and a model: `prepare` runs per request, `predict` once per batch."""

    task: str  # the task, as `vitkit export` names it: "classification", "segmentation", "detection"
    model: str  # the model's registered name, or the exported file's name
    format: str  # "torch", "onnx" or "exported-program"

    def prepare(self, image: np.ndarray) -> Any: ...

    def predict(self, prepared: list[Any], names: list[str]) -> list[dict]: ...


class TorchPredictor:
    """A task from its Lightning checkpoint; preprocessing is the checkpoint's evaluation pipeline (the data module's
    eval transform, ending in a resize to the model's input size) and rows come from the task's `predict_step`."""

    format = "torch"

    def __init__(self, path: str, device: str = "cpu") -> None:
        from ..explain.command import load_task
        from ..explain.tasks import eval_pipeline
        from ..tasks.classification import ImageClassifier

        task, ckpt = load_task(path, device)
        if not isinstance(task, ImageClassifier):
            raise ConfigError(f"{path} (--ckpt): holds a {type(task).__name__}; `vitkit serve` serves image "
                              "classifiers (ImageClassifier) from checkpoints so far; export other tasks with "
                              "`vitkit export` and serve the .onnx/.pt2 file")
        self.net, self.device = task, torch.device(device)
        self.task, self.model = "classification", str(task.hparams.get("model", type(task.net).__name__))
        self.transform, _, _ = eval_pipeline(ckpt, tuple(task.net.img_size))

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        return self.transform(image=image)["image"]  # (H, W, 3) uint8 -> (3, h, w) float32

    @torch.inference_mode()
    def predict(self, prepared: list[torch.Tensor], names: list[str]) -> list[dict]:
        x = torch.stack(prepared).to(self.device)  # (B, 3, h, w)
        return self.net.predict_step((x, names), 0)


class ExportedPredictor:
    """An exported model (`vitkit export`: .onnx run by onnxruntime, .pt2 by torch.export), through
    `vitkit.export.runtime.ExportedModel`, which owns its preprocessing and its rows."""

    def __init__(self, path: str) -> None:
        try:
            from ..export.runtime import ExportedModel
        except ImportError as err:
            raise ConfigError(f"{path} (--ckpt): serving exported models needs vitkit.export ({err})") from err
        self.runtime = ExportedModel(path)
        meta = self.runtime.meta
        if "batch" not in meta.get("dynamic_axes", ()):
            raise ConfigError(f"{path} (--ckpt): exported with a fixed batch size (dynamic axes: "
                              f"{meta.get('dynamic_axes')}); expected one exported with `vitkit export --dynamic "
                              "batch`, so that concurrent requests can run as one batch")
        self.task, self.model = str(meta.get("task")), os.path.basename(path)
        self.format = str(meta.get("format") or ("onnx" if path.endswith(".onnx") else "exported-program"))

    def prepare(self, image: np.ndarray) -> Image.Image:
        return Image.fromarray(image)

    def predict(self, prepared: list[Image.Image], names: list[str]) -> list[dict]:
        rows = self.runtime.predict(prepared)
        return [{"path": name, **row} for name, row in zip(names, rows)]


def load_predictor(path: str, device: str = "cpu") -> Predictor:
    """A TorchPredictor for a Lightning .ckpt, an ExportedPredictor for an .onnx/.pt2 file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} (--ckpt): file not found; expected a Lightning .ckpt or an exported "
                              ".onnx/.pt2 file")
    if path.endswith(EXPORTED_SUFFIXES):
        return ExportedPredictor(path)
    return TorchPredictor(path, device)
