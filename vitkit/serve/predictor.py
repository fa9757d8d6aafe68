"""What `vitkit serve` runs: a predictor turns one request's input (an image decoded in memory, a question, a
text) into model input, and a batch of such inputs into the rows the task predicts.

`RuntimePredictor` wraps `vitkit.export.runtime.ExportedModel`: over a Lightning checkpoint's eager graphs (the
task rebuilt as `vitkit explain` does) or over the files `vitkit export` wrote.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

# the data layer's decoding, applied to bytes instead of a path (PIL opens either): any mode -> RGB uint8
from ..data.images import _decode, _to_rgb
from ..errors import CheckpointError, ConfigError

EXPORTED_SUFFIXES = (".json", ".onnx", ".pt2")


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


@dataclass
class Upload:
    """One request's input, read in memory: an image (H, W, 3) uint8 and/or text fields."""

    name: str
    image: np.ndarray | None = None
    text: str | None = None  # seq2seq: the text to translate
    question: str | None = None  # VQA: the question about the image


class Predictor(Protocol):
    """The seam between the HTTP app and a model: `prepare` runs per request, `predict` once per batch."""

    task: str  # the task, as `vitkit export` names it: "classification", "segmentation", "detection", ...
    model: str  # the model's registered name, or the exported file's name
    format: str  # "torch", "onnx" or "exported-program"
    inputs: str  # what a request carries: "image", "image+question" (VQA) or "text" (seq2seq)

    def prepare(self, upload: Upload) -> Any: ...

    def predict(self, prepared: list[Any], names: list[str]) -> list[dict]: ...


INPUTS = {"seq2seq": "text", "vqa": "image+question"}


class RuntimePredictor:
    """Any task through `vitkit.export.runtime.ExportedModel`: over exported files (.onnx run by onnxruntime, .pt2
    by torch.export) or over a Lightning checkpoint's eager graphs (`ExportedModel.from_checkpoint`), so both give
    the same preprocessing (the data module's evaluation pipeline) and the same rows."""

    def __init__(self, runtime, model: str, format: str) -> None:
        self.runtime, self.model, self.format = runtime, model, format
        self.task = str(runtime.meta["task"])
        self.inputs = INPUTS.get(self.task, "image")

    def prepare(self, upload: Upload) -> Any:
        """The model input of one request; a text longer than the model takes is a ConfigError naming it (here,
        so that one request cannot fail the batch it would have joined)."""
        meta = self.runtime.meta
        if self.inputs == "text":
            self.runtime.encode_texts([upload.text], meta["decoder"]["max_len"], upload.name)
            return upload.text
        image = Image.fromarray(upload.image)
        if self.inputs == "image+question":
            self.runtime.encode_texts([upload.question], meta["max_len"], f"{upload.name}: question")
            return image, upload.question
        return image

    def predict(self, prepared: list[Any], names: list[str]) -> list[dict]:
        if self.inputs == "image+question":
            rows = self.runtime.predict([p[0] for p in prepared], [p[1] for p in prepared])
        else:
            rows = self.runtime.predict(prepared)
        return [{"path": name, **row} for name, row in zip(names, rows)]


def load_predictor(path: str, device: str = "cpu") -> RuntimePredictor:
    """A predictor over a Lightning .ckpt (eager, on `device`) or an exported model (its .json, .onnx or .pt2)."""
    from ..export.runtime import ExportedModel

    if not os.path.isfile(path):
        raise CheckpointError(f"{path} (--ckpt): file not found; expected a Lightning .ckpt or a model written by "
                              "`vitkit export` (.json, .onnx or .pt2)")
    if not path.endswith(EXPORTED_SUFFIXES):
        runtime = ExportedModel.from_checkpoint(path, device)
        return RuntimePredictor(runtime, str(runtime.meta.get("model") or os.path.basename(path)), "torch")
    if device != "cpu":
        raise ConfigError(f"--device {device}: exported models run on the CPU (onnxruntime / torch.export); "
                          "serve the .ckpt to use another device")
    runtime = ExportedModel(path)
    meta = runtime.meta
    if "batch" not in meta.get("dynamic_axes", ()):
        raise ConfigError(f"{path} (--ckpt): exported with a fixed batch size (dynamic axes: "
                          f"{meta.get('dynamic_axes')}); expected one exported with `vitkit export --dynamic "
                          "batch`, so that concurrent requests can run as one batch")
    return RuntimePredictor(runtime, os.path.basename(path), str(meta["format"]))
