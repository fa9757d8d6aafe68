"""Do the explanation maps point at the evidence? The pointing game on embedded data with known boxes.

What it measures. A small ViT (`ImageClassifier`, trained by Lightning as `train.py fit` would) is trained
for `--steps` steps on one of two embedded localisation sets (`vitkit.explain.evidence`):

- `digits`: a real 8x8 scikit-learn digit pasted at a random spot of a 32x32 noise canvas, next to a second,
  pixel-shuffled digit (same ink, no shape) at another spot; label = the digit. 4x4 patches (8x8 grid).
- `shapes`: one-object scenes of the shapes generator (64x64, textured backgrounds); label = circle, square,
  triangle or star. 8x8 patches (8x8 grid).

On held-out images (test digits never seen in training) it reports the test accuracy and, per method
(rollout, raw attention of the last layer, gradient-weighted relevance for the predicted class), the hit
rate: how often the centre of the map's peak patch lies inside the object's box. Two baselines: chance (a
peak drawn uniformly over the patches: the mean fraction of patch centres inside the box) and the same
methods on the untrained network (what brightness/texture alone attracts).

Usage (from the repository root; a few minutes per set on an idle 2-core CPU, much longer on a loaded one:
`--threads 1` is then faster):

    python benchmarks/rollout_hit_rate.py                              # both sets, avg pooling, seed 0
    python benchmarks/rollout_hit_rate.py --datasets digits --pool token --seeds 0 1 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitkit.explain import chance_rate, explain_classifier, pasted_digits, pointing_hits, shape_scenes
from vitkit.tasks import ImageClassifier

METHODS = ("rollout", "attention", "grad")
SETS = {  # name: (make(n, split, seed), img_size, patch_size)
    "digits": (lambda n, split, seed: pasted_digits(n, canvas=32, split=split, seed=seed), 32, 4),
    "shapes": (lambda n, split, seed: shape_scenes(n, img_size=64, split=split, seed=seed), 64, 8),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=sorted(SETS), default=["digits", "shapes"])
    p.add_argument("--pool", choices=("avg", "token"), default="avg")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps (batch 64)")
    p.add_argument("--test", type=int, default=500, help="held-out images scored")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="write every number to this file")
    return p.parse_args()


def hit_rates(model, x: torch.Tensor, boxes, img_size: int) -> dict[str, float]:
    rates = {}
    for method in METHODS:
        hits = [
            pointing_hits(explain_classifier(model, x[i : i + 100], method).heatmap, boxes[i : i + 100],
                          (img_size, img_size))
            for i in range(0, len(x), 100)
        ]
        rates[method] = torch.cat(hits).float().mean().item()
    return rates


def run(name: str, seed: int, args) -> dict:
    make, img_size, patch = SETS[name]
    pl.seed_everything(seed, verbose=False)
    train, test = make(args.steps * 64, "train", seed), make(args.test, "test", seed)
    kw = dict(patch_size=patch, depth=args.depth, embed_dim=args.dim, num_heads=args.heads, global_pool=args.pool,
              class_token=args.pool == "token")
    task = ImageClassifier("vit_nano_patch4_32", num_classes=len(train.class_names), img_size=img_size, model_kwargs=kw,
                           lr=args.lr, warmup_epochs=0.05, label_smoothing=0.0)
    x, y = test.tensors()
    untrained = hit_rates(task.model.eval(), x, test.boxes, img_size)
    task.model.train()  # Lightning keeps each submodule's mode at the start of fit
    start = time.perf_counter()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=True, accelerator="cpu")
    trainer.fit(task, DataLoader(TensorDataset(*train.tensors()), batch_size=64, shuffle=True))
    train_s = time.perf_counter() - start
    model = task.model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    grid = (img_size // patch, img_size // patch)
    return {"dataset": name, "seed": seed, "pool": args.pool, "steps": args.steps, "train_s": round(train_s, 1),
            "test_acc": acc, "chance": chance_rate(test.boxes, grid, (img_size, img_size)),
            "trained": hit_rates(model, x, test.boxes, img_size), "untrained": untrained}


def print_header(args) -> None:
    print(f"\nPointing game: the map's peak patch inside the object's box ({args.pool} pooling, "
          f"depth {args.depth}, width {args.dim}, {args.steps} steps of 64, {args.test} test images)\n")
    print("| set | seed | test acc | chance | " + " | ".join(f"{m} (untrained → trained)" for m in METHODS)
          + " | train s |")
    print("|---|---|---|---|" + "---|" * len(METHODS) + "---|", flush=True)


def print_row(r: dict) -> None:
    cells = " | ".join(f"{r['untrained'][m]:.1%} → **{r['trained'][m]:.1%}**" for m in METHODS)
    print(f"| {r['dataset']} | {r['seed']} | {r['test_acc']:.1%} | {r['chance']:.1%} | {cells} | {r['train_s']} |",
          flush=True)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            rows.append(run(name, seed, args))
            print_row(rows[-1])  # as each run ends (the table is printed whole at the end)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"args": vars(args), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print_header(args)
    for r in rows:
        print_row(r)


if __name__ == "__main__":
    main()
