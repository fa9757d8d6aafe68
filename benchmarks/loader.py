"""Does the data pipeline keep up? Images/s of vitkit's training DataLoader against images/s of the train step
it feeds, for the same batch, on this machine; and what the in-memory cache of a small folder buys.

The loader side is `ClassificationDataModule(...).train_dataloader()` (decode, albumentations train
pipeline, collate), timed over `--batches` batches after one warm-up batch, for each `--workers` count. The
model side is one vitkit train step (forward, cross-entropy, backward, fused AdamW) of `--model`, eager,
fp32, on `--device`. For ImageFolder data the script writes a synthetic JPEG folder first (`--jpeg-size`
pixels, random smooth images), so JPEG decoding and RandomResizedCrop are part of the cost, as with
ImageNet. Loader img/s per worker says how many CPU cores a GPU's step rate needs.

The `digits-*` cases put the embedded digits (in memory) beside the same images written as a PNG class folder
(`vitkit.data.write_image_folder`), read from disk on every access (`cache: none`, "cold") and decoded once
into memory (`cache: ram`); `--digits-config` takes the image size, batch and model from a training config.

    python benchmarks/loader.py   # ImageFolder JPEGs at 224, ViT-S/16; digits at 32, ViT-Ti/4
    python benchmarks/loader.py --cases imagefolder --workers 0 1 2 --json out.json
    python benchmarks/loader.py --cases digits digits-folder digits-folder-cached --workers 0 --batches 40
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import vitkit
from vitkit.data import ClassificationDataModule, write_image_folder
from vitkit.tasks.optim import build_adamw

CASES = {  # name -> (data module kwargs, model, img_size)
    "imagefolder": ({"dataset": "imagefolder", "cache": "none"}, "vit_small_patch16_224", 224),
    "imagefolder-cached": ({"dataset": "imagefolder", "cache": "ram"}, "vit_small_patch16_224", 224),
    "digits": ({"dataset": "digits"}, "vit_tiny_patch4_32", 32),
    "digits-folder": ({"dataset": "imagefolder", "cache": "none"}, "vit_tiny_patch4_32", 32),
    "digits-folder-cached": ({"dataset": "imagefolder", "cache": "ram"}, "vit_tiny_patch4_32", 32),
}


def write_jpeg_folder(root: str, n: int, size: int, classes: int = 4) -> None:
    """`n` smooth random RGB JPEGs of `size` pixels in `classes` class folders under root/train."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, "train", f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(os.path.join(folder, f"{i:05d}.jpg"),
                                                                         quality=90)


def loader_images_per_s(dm: ClassificationDataModule, batches: int) -> float:
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not timed
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def from_config(path: str) -> tuple[str, dict, int, int]:
    """(model name, model_kwargs, img_size, batch size) of a classification training config."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    return model["model"], dict(model.get("model_kwargs") or {}), data.get("img_size", 32), data.get("batch_size", 64)


def model_images_per_s(name: str, img_size: int, batch: int, device: torch.device, steps: int = 3, **kwargs) -> float:
    model = vitkit.create_model(name, num_classes=10, img_size=img_size, **kwargs).to(device).train()
    opt = build_adamw(model, lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["imagefolder", "digits"])
    p.add_argument("--digits-config", help="take img_size, batch and model of the digits cases from this config")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--images", type=int, default=512, help="synthetic JPEGs written for imagefolder")
    p.add_argument("--jpeg-size", type=int, default=320)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device, records = torch.device(args.device), []
    print("| data | img | batch | workers | loader img/s | loader img/s per worker | model | train step img/s "
          "| loader÷model |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        jpegs, pngs = os.path.join(tmp, "jpeg"), os.path.join(tmp, "digits")
        for case in args.cases:
            kwargs, model, size = CASES[case]
            batch, model_kwargs = args.batch_size, {}
            if case.startswith("imagefolder"):
                if not os.path.isdir(jpegs):
                    write_jpeg_folder(jpegs, args.images, args.jpeg_size)
                kwargs = {**kwargs, "root": jpegs, "val_fraction": 0.05}
            if case.startswith("digits") and args.digits_config:
                model, model_kwargs, size, batch = from_config(args.digits_config)
            if case.startswith("digits-folder"):
                if not os.path.isdir(pngs):
                    write_image_folder(ClassificationDataModule("digits"), pngs)
                kwargs = {**kwargs, "root": pngs}
            model_rate = model_images_per_s(model, size, batch, device, **model_kwargs)
            for workers in args.workers:
                dm = ClassificationDataModule(img_size=size, batch_size=batch, num_workers=workers, **kwargs)
                dm.setup("fit")
                rate = loader_images_per_s(dm, args.batches)
                rec = {"case": case, "img_size": size, "batch": batch, "workers": workers, "loader_img_s": rate,
                       "per_worker_img_s": rate / max(1, workers), "model": model, "model_img_s": model_rate,
                       "ratio": rate / model_rate, "device": str(device), "cores": os.cpu_count()}
                records.append(rec)
                print(f"| {case} | {size} | {batch} | {workers} | {rate:.0f} | {rec['per_worker_img_s']:.0f} | "
                      f"{model} | {model_rate:.1f} | {rec['ratio']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "argv": sys.argv[1:], "results": records}, f, indent=2)


if __name__ == "__main__":
    main()
