"""`vitkit explain`: load a trained task from its Lightning checkpoint, explain its predictions on images, and
write PNG overlays (image, heatmap, per-layer grid), the raw maps as .npy and an index explanations_<method>.csv.

    vitkit explain --ckpt runs/vit_tiny_digits/version_0/checkpoints/last.ckpt images/ --method rollout

Which task a checkpoint holds is read from it (LightningCLI stores `_class_path` in its hyper-parameters);
Each task's `explainers()` says how it is explained (`vitkit.explain.tasks` holds vitkit's own).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..data.images import list_images, scan_images
from ..errors import CheckpointError, ConfigError, DatasetNotFoundError
from .methods import METHODS
from .tasks import Inputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitkit explain",
        description="Show where a trained model looked: attention maps, rollout or gradient-weighted relevance "
        "as PNG overlays and .npy maps.",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images (searched recursively)")
    p.add_argument("--ckpt", required=True,
                   help="Lightning checkpoint written by `train.py fit` (e.g. .../checkpoints/last.ckpt)")
    p.add_argument("--method", choices=(*METHODS, "cross"), default=None,
                   help="classifiers: rollout (attention rollout, Abnar & Zuidema 2020; the default), attention (raw "
                   "attention of the pooled token per layer and head) or grad (gradient-weighted relevance for the "
                   "target class, Chefer et al. 2021); detectors and captioners: cross (decoder cross-attention of "
                   "each detected object's query / each generated word; the default); segmenters: rollout (read "
                   "from each predicted class's patches)")
    p.add_argument("--target", default=None, help="class to explain, by name or index (default: each image's "
                   "predicted class; segmenters: the largest predicted classes)")
    p.add_argument("--min-score", type=float, default=None,
                   help="detectors: explain detections scoring at least this (default: the task's display_threshold)")
    p.add_argument("--max-objects", type=int, default=6,
                   help="detectors: at most this many detections per image; segmenters: classes per image")
    p.add_argument("--out", default=None,
                   help="output folder (default: <run folder>/explain next to the checkpoint's run)")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean", help="how rollout combines heads")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images (counted and listed) instead of stopping")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--max-objects", args.max_objects)):
        if value < 1:
            raise ConfigError(f"{flag}: found {value}; expected a positive integer")
    task, ckpt = load_task(args.ckpt, args.device)
    explainers = task.explainers() if callable(getattr(task, "explainers", None)) else {}
    if not explainers:
        raise ConfigError(
            f"{args.ckpt}: holds a {type(task).__name__}, which offers nothing to explain; expected a task whose "
            "explainers() names its methods (classifiers, segmenters, DETR-style detectors, captioners)"
        )
    methods = list(explainers)
    args.method = args.method or methods[0]
    if args.method not in explainers:
        raise ConfigError(
            f"--method {args.method}: not available for {type(task).__name__}; expected one of {', '.join(methods)}"
        )
    inputs = collect_inputs(args.inputs, args.skip_corrupt)
    out = Path(args.out) if args.out else default_out_dir(Path(args.ckpt))
    out.mkdir(parents=True, exist_ok=True)
    rows = explainers[args.method](task, ckpt, inputs, args, out)
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
        raise CheckpointError(f"{path} (--ckpt): file not found; "
                              "expected a Lightning checkpoint written by `train.py fit`")
    try:  # weights-only, as the CLI reads checkpoints: opening a file cannot run code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a checkpoint we can read"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path} (--ckpt): cannot read it weights-only ({type(err).__name__}: {first}); expected a Lightning .ckpt "
            "written by vitkit"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} (--ckpt): found {found}; expected a Lightning checkpoint with 'state_dict' and 'hyper_parameters' "
            "(a plain weights file is loaded with vitkit.create_model(..., pretrained=...))"
        )
    hparams = ckpt["hyper_parameters"]
    stamp = ckpt.get("vitkit") if isinstance(ckpt.get("vitkit"), dict) else {}
    class_path = hparams.get("_class_path") or stamp.get("task") or "vitkit.tasks.ImageClassifier"
    cls = _task_class(class_path, path)
    # never re-read a `pretrained` source file or re-compile: the checkpoint holds the trained weights
    overrides = {k: v for k, v in (("pretrained", None), ("compile", False)) if k in hparams}
    try:
        task = cls.load_from_checkpoint(path, map_location=device, weights_only=True, **overrides)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} (--ckpt): cannot rebuild {class_path} from it ({first})") from err
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
            raise DatasetNotFoundError(
                f"{given} (explain inputs): no such file or folder; expected an image or a folder of images"
            )
    skipped: list[tuple[str, str]] = []
    if skip_corrupt:
        good, skipped = scan_images([p for p, _ in images])
        keep = set(good)
        images = [item for item in images if item[0] in keep]
    counts = Counter(n for _, n in images)
    images = [(p, n if counts[n] == 1 else f"{n}_{i}") for i, (p, n) in enumerate(images)]
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
