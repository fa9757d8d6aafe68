"""`vitkit explain`: load a trained task from its Lightning checkpoint, explain its predictions on images, and
write PNG overlays (image, heatmap, per-layer grid), the raw maps as .npy and an index explanations_<method>.csv.

    vitkit explain --ckpt runs/vit_tiny_digits/version_0/checkpoints/last.ckpt images/ --method rollout

Which task a checkpoint holds is read from it (LightningCLI stores `_class_path` in its hyper-parameters);
each task names the function that explains it in EXPLAINERS.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import pytorch_lightning as pl
import torch
from rich.progress import track

from ..data.images import list_images, load_rgb, scan_images
from ..data.transforms import DEFAULT_TRANSFORMS, build_transforms
from ..errors import CheckpointError, ConfigError, DatasetNotFoundError
from .methods import METHODS, explain_classifier
from .render import denormalise, save_layer_grid, save_maps, save_overlay

log = logging.getLogger("vitkit")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Inputs:
    """Images to explain: (path, name used for output files), and the unreadable ones skipped on request."""

    images: list[tuple[str, str]]
    skipped: list[tuple[str, str]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitkit explain",
        description="Show where a trained model looked: attention maps, rollout or gradient-weighted relevance "
        "as PNG overlays and .npy maps.",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images (searched recursively)")
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `train.py fit` (e.g. .../checkpoints/last.ckpt)")
    p.add_argument("--method", choices=METHODS, default="rollout",
                   help="rollout: attention rollout (Abnar & Zuidema 2020); attention: raw attention of the pooled "
                   "token per layer and head; grad: gradient-weighted relevance for the target class (Chefer et al. 2021)")
    p.add_argument("--target", default=None, help="class to explain, by name or index (default: each image's predicted class)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/explain next to the checkpoint's run)")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean", help="how rollout combines heads")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted and listed) instead of stopping")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: found {args.batch_size}; expected a positive integer")
    task, ckpt = load_task(args.ckpt, args.device)
    explainer = EXPLAINERS.get(type(task).__name__)
    if explainer is None:
        raise ConfigError(
            f"{args.ckpt}: holds a {type(task).__name__}; `vitkit explain` supports {', '.join(sorted(EXPLAINERS))}"
        )
    inputs = collect_inputs(args.inputs, args.skip_corrupt)
    out = Path(args.out) if args.out else default_out_dir(Path(args.ckpt))
    out.mkdir(parents=True, exist_ok=True)
    rows = explainer(task, ckpt, inputs, args, out)
    _write_index(rows, out / f"explanations_{args.method}.csv")
    print(f"explained {len(rows)} image(s) with {args.method}: {out}")
    if inputs.skipped:
        print(f"skipped {len(inputs.skipped)} unreadable image(s):")
        for path, reason in inputs.skipped:
            print(f"  {path}: {reason}")


# --------------------------------------------------------------------------- loading
def load_task(path: str, device: str = "cpu") -> tuple[pl.LightningModule, dict]:
    """The LightningModule saved in a checkpoint (class read from its `_class_path`), in eval mode, and the
    raw checkpoint dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} (--ckpt): file not found; expected a Lightning checkpoint written by `train.py fit`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle, zip and torch errors all mean "not a checkpoint we can read"
        raise CheckpointError(f"{path} (--ckpt): cannot read it ({type(err).__name__}: {err}); expected a Lightning .ckpt") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} (--ckpt): found {found}; expected a Lightning checkpoint with 'state_dict' and 'hyper_parameters' "
            "(a plain weights file is loaded with vitkit.create_model(..., pretrained=...))"
        )
    hparams = ckpt["hyper_parameters"]
    cls = _task_class(hparams.get("_class_path", "vitkit.tasks.ImageClassifier"), path)
    # never re-read a `pretrained` source file or re-compile: the checkpoint holds the trained weights
    overrides = {k: v for k, v in (("pretrained", None), ("compile", False)) if k in hparams}
    task = cls.load_from_checkpoint(path, map_location=device, **overrides)
    return task.eval(), ckpt


def _task_class(class_path: str, path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{path} (--ckpt): task class {class_path!r} cannot be imported ({err})") from err


def default_out_dir(ckpt: Path) -> Path:
    """`<run>/explain` for `<run>/checkpoints/x.ckpt` (next to the run's logs), else `explain` beside the file."""
    ckpt = ckpt.resolve()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / "explain"


def collect_inputs(paths: list[str], skip_corrupt: bool = False) -> Inputs:
    """Image files as given and every image under given folders; output names keep folder structure unique."""
    images: list[tuple[str, str]] = []
    for given in paths:
        if os.path.isdir(given):
            for found in list_images(given, field="explain inputs"):
                rel = os.path.relpath(found, given)
                images.append((found, _stem(rel)))
        elif os.path.isfile(given):
            images.append((given, _stem(Path(given).name)))
        else:
            raise DatasetNotFoundError(f"{given} (explain inputs): no such file or folder; expected an image or a folder of images")
    skipped: list[tuple[str, str]] = []
    if skip_corrupt:
        good, skipped = scan_images([p for p, _ in images])
        keep = set(good)
        images = [item for item in images if item[0] in keep]
    names = [n for _, n in images]
    images = [(p, n if names.count(n) == 1 else f"{n}_{i}") for i, (p, n) in enumerate(images)]
    return Inputs(images, skipped)


def _stem(rel: str) -> str:
    return os.path.splitext(rel)[0].replace(os.sep, "__").replace("/", "__")


def _write_index(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


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
    raise ConfigError(f"--target {target!r}: not a class of this model; expected a name ({shown}) or an index 0..{len(class_names) - 1}")


def eval_pipeline(ckpt: dict, img_size: tuple[int, int]):
    """The evaluation transform the model was tested with (from the checkpoint's data-module settings), ending
    in a resize to the model's input size so that any image fits; and its mean/std. Without data-module
    settings: a resize with ImageNet statistics."""
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    mean, std = tuple(dm.get("mean", IMAGENET_MEAN)), tuple(dm.get("std", IMAGENET_STD))
    h, w = img_size
    steps = DEFAULT_TRANSFORMS[dm["dataset"]](h, train=False) if dm.get("dataset") in DEFAULT_TRANSFORMS else []
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
    batches = [inputs.images[i : i + args.batch_size] for i in range(0, len(inputs.images), args.batch_size)]
    for batch in track(batches, description=f"explain ({args.method})", disable=len(batches) < 2):
        x = torch.stack([transform(image=load_rgb(p))["image"] for p, _ in batch]).to(device)
        exp = explain_classifier(net, x, args.method, target, args.head_fusion)
        probs = exp.logits.softmax(dim=-1)
        for i, (path, name) in enumerate(batch):
            rows.append(_save_one(exp, i, x[i], path, out / f"{name}_{args.method}", names, probs[i], mean, std))
    return rows


def _save_one(exp, i: int, x: torch.Tensor, path: str, stem: Path, names: list[str], probs, mean, std) -> dict:
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
        "target": names[tgt], "overlay": overlay.name, "layers": grid.name, "map": npy.name, "layer_maps": layers_npy.name,
    }


# Task class name -> function(task, checkpoint dict, inputs, args, out folder) -> index rows.
# Segmentation, detection and captioning tasks add theirs here (detection/captioning read decoder
# cross-attention with `vitkit.explain.cross_attention_maps`).
EXPLAINERS: dict[str, Callable[..., list[dict]]] = {"ImageClassifier": explain_classification}
