"""Does a ViT see the shapes? A plain 8x8 patchify against a convolutional stem (Xiao et al. 2021), same ViT after it.

    python benchmarks/conv_stem.py                       # 1,200 steps each, about 9 min on 2 CPU cores
    python benchmarks/conv_stem.py --steps 800 --json benchmarks/results/conv_stem_cpu.json   # the README's numbers

Both encoders (`vit_nano_patch4_32` at 64 px: 8x8 grid, 4 blocks of width 128; one of them with
`stem_channels=(32, 32, 64, 128)`) learn the same direct task from scratch on shapes scenes made in memory by the
shared generator: which of the four shapes are present (4 sigmoid outputs on mean-pooled tokens). It is the
skill every shapes question turns on ("how many stars?", "what shape is red?"), supervised directly. Prints,
every `--every` steps, the validation accuracy per shape and the fraction of scenes with all four right, and the
seconds per step, so the two encoders are compared in one run on the same machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import vitkit
from vitkit.data.shapes import SHAPES, ShapesConfig, render_scene


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n scenes (uint8 images, presence labels (n, 4)) from the shared generator at its defaults (64 px, 1-3 shapes)."""
    rng, cfg = np.random.default_rng(seed), ShapesConfig()
    images, labels = [], torch.zeros(n, len(SHAPES))
    for i in range(n):
        scene = render_scene(rng, cfg)
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1))
        for obj in scene.objects:
            labels[i, SHAPES.index(obj.shape)] = 1
    return torch.stack(images), labels


class Probe(nn.Module):
    def __init__(self, stem: tuple[int, ...] | None) -> None:
        super().__init__()
        self.encoder = vitkit.create_model("vit_nano_patch4_32", img_size=64, patch_size=8, depth=4, num_classes=0,
                                           stem_channels=stem)
        self.head = nn.Linear(self.encoder.embed_dim, len(SHAPES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(127.5).sub(1)
        return self.head(self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens:].mean(1))


def run(name: str, stem, train, val, args) -> list[dict]:
    torch.manual_seed(0)
    model = Probe(stem)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    gen, rows, start = torch.Generator().manual_seed(0), [], time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train[0]), (args.batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(model(train[0][idx]), train[1][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                right = (model(val[0]) > 0) == (val[1] > 0.5)
            model.train()
            row = {"encoder": name, "step": step, "loss": round(loss.item(), 4),
                   "per_shape": dict(zip(SHAPES, [round(v, 3) for v in right.float().mean(0).tolist()])),
                   "all_four": round(right.all(1).float().mean().item(), 3),
                   "s_per_step": round((time.perf_counter() - start) / step, 3)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-scenes", type=int, default=10000)
    p.add_argument("--json", help="also write every row here")
    args = p.parse_args()
    train, val = scenes(args.train_scenes, seed=1), scenes(500, seed=2)
    rows = run("patchify", None, train, val, args) + run("conv stem", (32, 32, 64, 128), train, val, args)
    last = {r["encoder"]: r for r in rows}
    print(f"\nafter {args.steps} steps of {args.batch_size}: scenes with all four shapes right "
          f"{last['patchify']['all_four']:.3f} (patchify) vs {last['conv stem']['all_four']:.3f} (conv stem); "
          f"{last['conv stem']['s_per_step'] / last['patchify']['s_per_step']:.2f}x the time per step")
    if args.json:
        machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
