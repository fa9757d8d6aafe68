"""Exportable graphs of vitkit's tasks: plain `nn.Module`s whose forward takes pixels and returns named tensors,
with what `predict` does after the network (detection's top-k boxes) inside the graph. Each `ExportSpec` also says
how to build the eager reference the exported file is checked against and what the runtime needs to preprocess."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import box_convert

from ..errors import ConfigError
from ..nn import to_2tuple
from .formats import dynamic_shapes

TEXT_TASKS = ("Seq2Seq", "ImageCaptioner", "VisualQA")


@dataclass
class GraphSpec:
    """One graph to trace: the module, its example inputs by name (in call order), outputs, dynamic shapes."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic_shapes: dict | None


@dataclass
class ExportSpec:
    """An image task's graph (pixels in) and what travels with it."""

    graph: nn.Module
    task: str  # "classification" | "segmentation" | "detection"
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    output_names: list[str]
    dynamic_size: bool  # whether the graph can take another image size than `image_size`
    extra_meta: dict = field(default_factory=dict)

    def example(self, batch: int, grow: int = 0) -> torch.Tensor:
        return example_pixels(self.image_size, self.patch_size, batch, grow)

    def graph_specs(self, dynamic: set[str]) -> dict[str, GraphSpec]:
        return {"model": GraphSpec(self.graph, {"pixels": self.example(2)}, self.output_names,
                                   dynamic_shapes(dynamic, self.patch_size))}


def example_pixels(image_size: tuple[int, int], patch_size: tuple[int, int], batch: int, grow: int = 0) -> torch.Tensor:
    """Random pixels (batch, 3, H, W) at the trained size, `grow` patches taller and twice that wider."""
    (h, w), (ph, pw) = image_size, patch_size
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, h + grow * ph, w + 2 * grow * pw, generator=g)


class LogitsGraph(nn.Module):
    """pixels (B, 3, H, W) -> the network's logits: (B, K) for a classifier, (B, K, H, W) per pixel at the input
    size for a segmenter (its bilinear upsampling is part of the graph)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


class DetectorGraph(nn.Module):
    """pixels (B, 3, S, S) letterboxed canvases -> boxes (B, k, 4) xyxy in canvas pixels clamped to the canvas,
    scores (B, k), labels (B, k) int64: the top-k (query, class) pairs of `tasks.detection.postprocess`, before its
    per-image rescale to original pixels and score threshold (the runtime does those; they need each image's size)."""

    def __init__(self, model: nn.Module, top_k: int) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(pixels)
        prob = out["pred_logits"].float().softmax(-1)[..., :-1]  # (B, Q, K), "no object" dropped
        Q, K = prob.shape[1], prob.shape[2]
        scores, index = prob.flatten(1).topk(min(self.top_k, Q * K), dim=1)  # (B, k)
        query, labels = index // K, index % K
        canvas = pixels.shape[-1]
        xyxy = box_convert(out["pred_boxes"].float(), "cxcywh", "xyxy") * canvas  # (B, Q, 4) canvas pixels
        boxes = xyxy.gather(1, query[..., None].expand(-1, -1, 4)).clamp(0, canvas)
        return boxes, scores, labels


def build_spec(task: nn.Module, dynamic_size: bool) -> ExportSpec:
    """The exportable graph of a loaded image task (a copy: the task itself is left as it was); text tasks are
    `vitkit.export.text.build_text_spec`'s."""
    name = type(task).__name__
    net = copy.deepcopy(getattr(task, "net", task.model)).eval()
    if name == "ImageClassifier":
        allow_any_size(net, dynamic_size, name)
        return ExportSpec(LogitsGraph(net), "classification", tuple(net.img_size), tuple(net.patch_size),
                          ["logits"], dynamic_size, {"top_k": task.k})
    if name == "SemanticSegmenter":
        allow_any_size(net.encoder, dynamic_size, name)
        return ExportSpec(LogitsGraph(net), "segmentation", tuple(net.img_size), tuple(net.patch_size),
                          ["logits"], dynamic_size)
    if name == "ObjectDetector":
        if dynamic_size:
            raise ConfigError(f"--dynamic size: {name} ({type(net).__name__}) cannot take another image size: its "
                              "images are letterboxed onto a fixed square canvas and the position embeddings of its "
                              "decoder memory / detection tokens are built for that canvas's patch grid; "
                              "use --dynamic batch")
        size, patch = tuple(net.img_size), to_2tuple(net.encoder.patch_embed.patch_size)
        return ExportSpec(DetectorGraph(net, task.top_k), "detection", size, patch,
                          ["boxes", "scores", "labels"], False,
                          {"display_threshold": task.display_threshold, "score_threshold": task.score_threshold,
                           "num_classes": task.hparams.num_classes, "category_ids": task.dataset_category_ids()})
    raise ConfigError(f"{name}: not a task vitkit export knows; expected ImageClassifier, SemanticSegmenter, "
                      f"ObjectDetector or one of {', '.join(TEXT_TASKS)}")


def allow_any_size(encoder: nn.Module, dynamic_size: bool, task: str) -> None:
    """Let a vitkit ViT take any input size its patch divides (position embeddings resampled in the graph)."""
    if not dynamic_size:
        return
    if not (hasattr(encoder, "dynamic_img_size") and hasattr(getattr(encoder, "patch_embed", None),
                                                              "dynamic_img_size")):
        raise ConfigError(f"--dynamic size: the {task}'s encoder {type(encoder).__name__} has no dynamic_img_size "
                          "switch (only vitkit's VisionTransformer resamples its positions per input); drop 'size'")
    encoder.dynamic_img_size = encoder.patch_embed.dynamic_img_size = True
