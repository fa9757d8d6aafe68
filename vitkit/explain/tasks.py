"""How `vitkit explain` explains each task: preprocessing as the task was evaluated, the maps, the pictures.

A task offers these through its `explainers()` hook (`vitkit.tasks.base.VitkitTask`): method -> function, the first
the default.
Classifiers: rollout / attention / grad over the encoder. Detectors (DETR-style): the decoder
cross-attention of each detected object's query. Captioners: the decoder cross-attention of each generated
word. Segmenters: the encoder's rollout read from the patches predicted as each class. Another task plugs
in through its own `explainers()`, with no edit here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from rich.progress import track

from ..data.images import load_rgb
from ..data.transforms import build_transforms, default_eval_steps
from ..errors import ConfigError
from ..nn import capture_attention
from .methods import cross_attention_maps, explain_classifier, region_read_out, rollout, to_grid
from .render import denormalise, save_layer_grid, save_maps, save_object_maps, save_overlay

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Inputs:
    """Images to explain: (path, name used for output files), and the unreadable ones skipped on request."""

    images: list[tuple[str, str]]
    skipped: list[tuple[str, str]]


def _batches(inputs: Inputs, size: int, what: str) -> list[list[tuple[str, str]]]:
    batches = [inputs.images[i : i + size] for i in range(0, len(inputs.images), size)]
    return list(track(batches, description=what, disable=len(batches) < 2))


def _normalisation(ckpt: dict) -> tuple[tuple, tuple]:
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    return tuple(dm.get("mean", IMAGENET_MEAN)), tuple(dm.get("std", IMAGENET_STD))


# --------------------------------------------------------------------------- classification
def parse_target(target: str | None, class_names: list[str]) -> int | None:
    """--target as a class name or an index into class_names; None means the predicted class."""
    if target is None:
        return None
    if target in class_names:
        return class_names.index(target)
    if target.lstrip("-").isdigit() and 0 <= int(target) < len(class_names):
        return int(target)
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    raise ConfigError(
        f"--target {target!r}: not a class of this model; "
        f"expected a name ({shown}) or an index 0..{len(class_names) - 1}"
    )


def eval_pipeline(ckpt: dict, img_size: tuple[int, int]):
    """The evaluation transform the model was tested with (from the checkpoint's data-module settings), ending
    in a resize to the model's input size so that any image fits; and its mean/std. Without data-module
    settings: a resize with ImageNet statistics."""
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    mean, std = _normalisation(ckpt)
    h, w = img_size
    chosen = (ckpt.get("ClassificationDataModule") or {}).get("folder_pipeline")  # an image folder's default
    steps = default_eval_steps(dm.get("dataset"), h, chosen)
    fit = [A.Resize(height=h, width=w)]  # any input size ends at the model's
    return build_transforms(dm.get("eval_transforms"), steps, "data.eval_transforms", mean, std, extra=fit), mean, std


def explain_classification(task, ckpt: dict, inputs: Inputs, args, out: Path) -> list[dict]:
    """Explain an ImageClassifier's predictions: overlays, layer grids, .npy maps; one index row per image."""
    net = task.net
    transform, mean, std = eval_pipeline(ckpt, tuple(net.img_size))
    names = list(task.class_names)
    target = parse_target(args.target, names)
    device = next(net.parameters()).device
    rows = []
    for batch in _batches(inputs, args.batch_size, f"explain ({args.method})"):
        x = torch.stack([transform(image=load_rgb(p))["image"] for p, _ in batch]).to(device)
        exp = explain_classifier(net, x, args.method, target, args.head_fusion)
        probs = exp.logits.softmax(dim=-1)
        for i, (path, name) in enumerate(batch):
            rows.append(_save_classification(exp, i, x[i], path, out / f"{name}_{args.method}", names, probs[i],
                                             mean, std))
    return rows


def _save_classification(exp, i: int, x: torch.Tensor, path: str, stem: Path, names: list[str], probs, mean,
                         std) -> dict:
    image = denormalise(x, mean, std)
    pred, tgt = int(probs.argmax()), int(exp.target[i])
    title = f"{Path(path).name}: predicted {names[pred]} ({probs[pred]:.1%})"
    if exp.method == "grad":
        title += f", relevance for {names[tgt]}"
    overlay = save_overlay(image, exp.heatmap[i].cpu(), stem.with_name(stem.name + ".png"), f"{exp.method} — {title}")
    layer_label = "rollout to layer" if exp.method == "rollout" else "layer"
    grid = save_layer_grid(image, exp.layers[i].cpu(), stem.with_name(stem.name + "_layers.png"), title, layer_label)
    npy, layers_npy = save_maps(stem, exp.heatmap[i], exp.layers[i])
    return {
        "path": path, "method": exp.method, "predicted": names[pred], "probability": round(float(probs[pred]), 6),
        "target": names[tgt], "overlay": overlay.name, "layers": grid.name, "map": npy.name,
        "layer_maps": layers_npy.name,
    }


# --------------------------------------------------------------------------- detection
def detection_inputs(paths: list[str], size: int, mean, std) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Images letterboxed onto the detector's square canvas as in evaluation: (B, 3, S, S) and the canvases."""
    from ..data.detection import letterbox

    fill = tuple(int(round(m * 255)) for m in mean)
    canvases = [letterbox(load_rgb(p), np.zeros((0, 4), np.float32), size, fill)[0] for p in paths]
    x = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in canvases])
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1), canvases


def detector_cross_attention(model, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """One forward with the decoder's cross-attention captured: (outputs, (B, L, Q, gh, gw) per-layer maps of
    every query, heads averaged)."""
    encoder, head = model.encoder, model.head
    with torch.no_grad(), capture_attention(head) as attns:
        out = model(x)
    weights = [a.attn_weights for a in attns if a.cross]  # one (B, heads, Q, M) per decoder layer
    grid, prefix = tuple(encoder.patch_embed.grid_size), encoder.num_prefix_tokens
    maps = torch.stack([cross_attention_maps(weights, grid, prefix, layer=i) for i in range(len(weights))], dim=1)
    return out, maps


def explain_detection(task, ckpt: dict, inputs: Inputs, args, out: Path) -> list[dict]:
    """Explain an ObjectDetector (DETR-style): for each detection scoring at least --min-score (at most
    --max-objects per image), where its query looked: the last decoder layer's cross-attention, heads averaged."""
    model = task.model
    if not hasattr(model, "head") or not hasattr(model.head, "blocks"):
        raise ConfigError(
            f"{type(model).__name__} has no decoder to cross-attend; `vitkit explain` explains DETR-style detectors"
        )
    mean, std = _normalisation(ckpt)
    size = model.img_size[0]
    names = list(task.class_names)
    min_score = task.hparams.get("display_threshold", 0.3) if args.min_score is None else args.min_score
    rows = []
    for batch in _batches(inputs, args.batch_size, "explain (cross-attention)"):
        x, canvases = detection_inputs([p for p, _ in batch], size, mean, std)
        outputs, maps = detector_cross_attention(model, x.to(next(model.parameters()).device))
        probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]  # (B, Q, K) without "no object"
        scores, labels = probs.max(-1)  # each query's best class
        boxes = outputs["pred_boxes"].float()  # (B, Q, 4) normalised cxcywh on the canvas
        xyxy = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1) * size
        for b, (path, name) in enumerate(batch):
            order = scores[b].argsort(descending=True)
            keep = order[scores[b][order] >= min_score][: args.max_objects]
            rows.append(_save_detection(path, out / f"{name}_cross", canvases[b], maps[b, :, keep].cpu(),
                                        xyxy[b, keep].cpu(), scores[b, keep].tolist(),
                                        [names[c] for c in labels[b, keep].tolist()], keep.tolist()))
    return rows


def _save_detection(path, stem: Path, canvas, maps, boxes, scores, labels, queries) -> dict:
    # maps (L, n, gh, gw): the picture shows the last layer, the .npy files keep every layer
    captions = [f"#{i + 1} {lab} {s:.2f} (query {q})" for i, (lab, s, q) in enumerate(zip(labels, scores, queries))]
    title = f"{Path(path).name}: {len(queries)} detection(s), decoder cross-attention of each query (last layer)"
    boxes = boxes.clamp(0, canvas.shape[0])
    picture = save_object_maps(canvas, maps[-1], captions, stem.with_name(stem.name + ".png"), title, boxes=boxes)
    npy, layers_npy = save_maps(stem, maps[-1], maps.transpose(0, 1))  # (n, gh, gw), (n, L, gh, gw)
    return {"path": path, "method": "cross", "detections": len(queries),
            "objects": "; ".join(f"{lab} {s:.3f}" for lab, s in zip(labels, scores)),
            "picture": picture.name, "map": npy.name, "layer_maps": layers_npy.name}


# --------------------------------------------------------------------------- segmentation
def segmenter_region_rollout(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward with the encoder's attention captured: (logits (B, K, H, W), the encoder's rollout
    (B, N, N), each patch's predicted class (B, gh, gw) from the logits averaged over the patch)."""
    encoder = model.encoder
    with torch.no_grad(), capture_attention(encoder) as attns:
        logits = model(x)
    weights = [a.attn_weights for a in attns if not a.cross]
    grid = tuple(encoder.patch_embed.grid_size)
    labels = torch.nn.functional.adaptive_avg_pool2d(logits, grid).argmax(dim=1)  # (B, gh, gw)
    return logits, rollout(weights), labels


def explain_segmentation(task, ckpt: dict, inputs: Inputs, args, out: Path) -> list[dict]:
    """Explain a SemanticSegmenter: for each predicted class (largest first, at most --max-objects, or the
    --target class), the encoder's attention rollout read from the patches predicted as that class: where
    the model looked to label that region."""
    model = task.model
    transform, mean, std = eval_pipeline(ckpt, tuple(model.img_size))
    names = list(task.class_names)
    target = parse_target(args.target, names)
    prefix, grid = model.encoder.num_prefix_tokens, tuple(model.encoder.patch_embed.grid_size)
    rows = []
    for batch in _batches(inputs, args.batch_size, "explain (region rollout)"):
        x = torch.stack([transform(image=load_rgb(p))["image"] for p, _ in batch]).to(next(model.parameters()).device)
        logits, rolled, labels = segmenter_region_rollout(model, x)
        for b, (path, name) in enumerate(batch):
            counts = torch.bincount(labels[b].flatten(), minlength=len(names))
            present = [c for c in counts.argsort(descending=True).tolist() if counts[c] > 0]
            classes = [target] if target is not None else present[: args.max_objects]
            regions = torch.stack([labels[b].flatten() == c for c in classes])  # (n, N_patches)
            maps = to_grid(region_read_out(rolled[b : b + 1].expand(len(classes), -1, -1), regions, prefix), grid)
            mask = logits[b].argmax(dim=0).cpu().numpy()
            rows.append(_save_segmentation(path, out / f"{name}_rollout", denormalise(x[b], mean, std), mask,
                                           maps.cpu(), [names[c] for c in classes], counts[classes].tolist()))
    return rows


def _save_segmentation(path, stem: Path, image: np.ndarray, mask: np.ndarray, maps, classes: list[str],
                       patches: list[int]) -> dict:
    from ..tasks.seg_metrics import colorize

    shown = (0.5 * image + 0.5 * colorize(mask)).astype(np.uint8)
    captions = [f"{c} ({n} patches)" for c, n in zip(classes, patches)]
    title = f"{Path(path).name}: rollout read from the patches predicted as each class"
    path_png = stem.with_name(stem.name + ".png")
    picture = save_object_maps(image, maps, captions, path_png, title, first=shown, first_title="prediction")
    npy = stem.with_name(stem.name + ".npy")
    np.save(npy, np.asarray(maps, dtype=np.float32))  # (classes, gh, gw)
    return {"path": path, "method": "rollout", "classes": "; ".join(classes), "picture": picture.name, "map": npy.name}


# --------------------------------------------------------------------------- captioning
def caption_cross_attention(
    model, x: torch.Tensor, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy captions and, for each generated token, where the decoder looked when it chose it.

    The caption is generated as the task does (KV cache); then one teacher-forced pass of the causal decoder
    over BOS + the caption gives, at row t, exactly the step that produced token t (a causal decoder's
    full pass equals its cached decoding), with its cross-attention captured.

    Returns:
        ids (B, L) EOS-terminated and padded, the teacher-forced logits (B, L, V), and the maps
        (B, layers, L, gh, gw), heads averaged.
    """
    encoder = model.encoder
    ids = model.generate(x, max_new_tokens, beam_size=1)  # (B, L), without BOS
    bos = torch.full_like(ids[:, :1], model.special.bos)
    with torch.no_grad(), capture_attention(model.decoder) as attns:
        logits = model.decoder(torch.cat([bos, ids[:, :-1]], dim=1), model.encode(x))
    weights = [a.attn_weights for a in attns if a.cross]  # (B, heads, L, M) per layer
    grid, prefix = tuple(encoder.patch_embed.grid_size), encoder.num_prefix_tokens
    maps = torch.stack([cross_attention_maps(weights, grid, prefix, layer=i) for i in range(len(weights))], dim=1)
    return ids, logits, maps


def explain_captioning(task, ckpt: dict, inputs: Inputs, args, out: Path) -> list[dict]:
    """Explain an ImageCaptioner: the greedy caption and the last decoder layer's cross-attention for every
    generated word (token), heads averaged; all layers in the .npy files."""
    if task.tokenizer is None:
        raise ConfigError(f"{args.ckpt}: the checkpoint holds no tokenizer; expected one saved by `train.py fit`")
    model = task.model
    transform, mean, std = eval_pipeline(ckpt, tuple(model.encoder.img_size))
    max_new = task.decoding.get("max_new_tokens") or model.max_len - 1
    rows = []
    for batch in _batches(inputs, args.batch_size, "explain (cross-attention per word)"):
        x = torch.stack([transform(image=load_rgb(p))["image"] for p, _ in batch]).to(next(model.parameters()).device)
        ids, _, maps = caption_cross_attention(model, x, max_new)
        for b, (path, name) in enumerate(batch):
            tokens = ids[b].tolist()
            n = tokens.index(model.special.eos) if model.special.eos in tokens else len(tokens)
            words = [task.tokenizer.decode([t]).strip() or repr(task.tokenizer.decode([t])) for t in tokens[:n]]
            rows.append(_save_caption(path, out / f"{name}_cross", denormalise(x[b], mean, std), maps[b, :, :n].cpu(),
                                      words, task.tokenizer.decode(tokens)))
    return rows


def _save_caption(path, stem: Path, image: np.ndarray, maps, words: list[str], caption: str) -> dict:
    # maps (L, n, gh, gw): the picture shows the last layer, the .npy files keep every layer
    captions = [f"{i + 1}: {w}" for i, w in enumerate(words)]
    title = f"{Path(path).name}: \"{caption}\" — decoder cross-attention per word (last layer)"
    picture = save_object_maps(image, maps[-1], captions, stem.with_name(stem.name + ".png"), title,
                               first_title="image")
    npy, layers_npy = save_maps(stem, maps[-1], maps.transpose(0, 1))  # (n, gh, gw), (n, L, gh, gw)
    return {"path": path, "method": "cross", "caption": caption, "words": " | ".join(words),
            "picture": picture.name, "map": npy.name, "layer_maps": layers_npy.name}
