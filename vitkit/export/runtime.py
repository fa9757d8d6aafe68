"""Run an exported vitkit model: `ExportedModel(path)` reads the .onnx (onnxruntime) or .pt2 (`torch.export.load`)
and the JSON beside it, preprocesses PIL images as the task was evaluated, and returns what the task's
`predict_step` returns per image (without "path").

    model = ExportedModel("runs/vit_tiny_digits/version_0/export/model.onnx")
    model.predict([PIL.Image.open("seven.png")])  # [{"labels": ["7", ...], "probs": [0.93, ...]}]
"""
from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_convert

from ..errors import CheckpointError, ConfigError


class ExportedModel:
    """An exported graph and its preprocessing metadata (`.meta`, the JSON written next to it)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        meta_path = self.path.with_suffix(".json")
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: file not found; expected a model written by `vitkit export`")
        if not meta_path.is_file():
            raise CheckpointError(f"{meta_path}: file not found; expected the metadata `vitkit export` writes next to "
                                  f"{self.path.name}")
        self.meta: dict = json.loads(meta_path.read_text())
        self.output_names: list[str] = list(self.meta["output_names"])
        self._run = _onnx_runner(self.path, threads) if self.path.suffix == ".onnx" else _program_runner(self.path)
        spec = self.meta.get("transform")
        self._transform = A.from_dict(spec) if spec else None

    # -- preprocessing --
    def preprocess(self, images: list[Image.Image]) -> np.ndarray:
        """float32 (B, 3, H, W) at `meta["image_size"]`, normalised as the data module does for predict."""
        return self._prepare(images)[0]

    def _prepare(self, images: list[Image.Image]) -> tuple[np.ndarray, list[dict]]:
        if not images:
            raise ConfigError("ExportedModel: no images given; expected a list of PIL images")
        arrays = [np.asarray(im.convert("RGB")) for im in images]
        info = [{"orig_size": a.shape[:2]} for a in arrays]
        if self.meta["task"] == "detection":
            return self._letterbox(arrays, info), info
        h, w = self.meta["image_size"]
        if self._transform is not None:
            pixels = [self._transform(image=a)["image"] for a in arrays]
            pixels = [p.numpy() if isinstance(p, torch.Tensor) else p for p in pixels]
        else:  # no pipeline recorded: resize and normalise
            pixels = [_normalise(np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)), self.meta)
                      for a in arrays]
        return np.stack(pixels).astype(np.float32), info

    def _letterbox(self, arrays: list[np.ndarray], info: list[dict]) -> np.ndarray:
        from ..data.detection import letterbox

        size = self.meta["image_size"][0]
        fill = tuple(int(round(m * 255)) for m in self.meta["mean"])
        canvases = []
        for a, i in zip(arrays, info):
            canvas, _, i["scale"] = letterbox(a, np.zeros((0, 4), np.float32), size, fill)
            canvases.append(_normalise(canvas, self.meta))
        return np.stack(canvases).astype(np.float32)

    # -- running --
    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's raw outputs by name for a (B, 3, H, W) float32 batch."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        return dict(zip(self.output_names, self._run(pixels)))

    def predict(self, images: list[Image.Image]) -> list[dict]:
        """One JSON-able dict per image, as the task's `predict_step` writes it (without "path")."""
        pixels, info = self._prepare(images)
        out = {k: torch.from_numpy(np.asarray(v)) for k, v in self.run(pixels).items()}
        return getattr(self, f"_predict_{self.meta['task']}")(out, info)

    def _predict_classification(self, out: dict, info: list[dict]) -> list[dict]:
        names, k = self._names(out["logits"].shape[1]), self.meta["top_k"]
        top_p, top_i = out["logits"].softmax(dim=-1).topk(k, dim=-1)
        return [{"labels": [names[i] for i in idx], "probs": [round(v, 6) for v in pr]}
                for idx, pr in zip(top_i.tolist(), top_p.tolist())]

    def _predict_segmentation(self, out: dict, info: list[dict]) -> list[dict]:
        """Per image the class index of every pixel at its own size ("mask", rows of ints; `predict` writes it as
        an index PNG instead) and the fraction of pixels of each class present."""
        names = self._names(out["logits"].shape[1])
        rows = []
        for logits, i in zip(out["logits"], info):
            mask = F.interpolate(logits[None], size=tuple(i["orig_size"]), mode="bilinear", align_corners=False)
            mask = mask[0].argmax(0).numpy()
            counts = np.bincount(mask.ravel(), minlength=len(names)) / mask.size
            rows.append({"mask": mask.tolist(),
                         "fractions": {names[k]: round(float(v), 6) for k, v in enumerate(counts) if v > 0}})
        return rows

    def _predict_detection(self, out: dict, info: list[dict]) -> list[dict]:
        m = self.meta
        names, ids = self._names(len(m["category_ids"])), m["category_ids"]
        rows = []
        for boxes, scores, labels, i in zip(out["boxes"], out["scores"], out["labels"], info):
            (sx, sy), (h, w) = i["scale"], i["orig_size"]
            box = boxes / boxes.new_tensor([sx, sy, sx, sy])
            box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                               box[:, 3].clamp(0, h)], 1)
            keep = (scores > m["score_threshold"]) & (scores >= m["display_threshold"])
            xywh = box_convert(box[keep], "xyxy", "xywh").tolist()
            rows.append({"detections": [
                {"label": names[c], "category_id": ids[c], "score": round(s, 5), "bbox": [round(v, 2) for v in b]}
                for b, s, c in zip(xywh, scores[keep].tolist(), labels[keep].tolist())]})
        return rows

    def _names(self, n: int) -> list[str]:
        return list(self.meta.get("class_names") or [str(i) for i in range(n)])


def _normalise(image: np.ndarray, meta: dict) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W), (x / 255 - mean) / std."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return x.transpose(2, 0, 1)


def _onnx_runner(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})


def _program_runner(path: Path):
    module = torch.export.load(str(path)).module()

    def run(pixels: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(pixels))
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

    return run
