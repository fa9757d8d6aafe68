"""Do the maps point at the evidence? The pointing game (Zhang et al. 2016, "Top-down Neural Attention by
Excitation Backprop"): a map hits when its peak falls inside the object's box. Plus two embedded
localisation sets where the object's box is known: real digits pasted at a random spot on a larger noisy
canvas, and one-object shapes scenes labelled by shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits

from ..data.shapes import SHAPES, ShapesConfig, render_scene


@dataclass
class LocalisationSet:
    """Images with one object each: images (N, H, W, 3) uint8, labels (N,), boxes (N, 4) x0, y0, x1, y1 in
    pixels (right/bottom exclusive), class_names."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    class_names: list[str]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) float images scaled to [-1, 1], and (N,) int64 labels."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return x, torch.from_numpy(self.labels).long()


def pasted_digits(
    n: int,
    canvas: int = 32,
    scale: int = 1,
    split: str = "train",
    seed: int = 0,
    noise: float = 48.0,
    distractor: bool = True,
) -> LocalisationSet:
    """scikit-learn's 8x8 digits, upscaled `scale` times, pasted at a uniform random spot on a `canvas`-sized
    square of uniform noise (0..`noise`). "train" draws from 1,400 of the 1,797 digits, "test" from the
    other 397, so test digits are never seen in training. The box is the pasted square.

    With `distractor`, a second digit with its pixels shuffled (same ink, no shape, no class) is pasted at
    another spot that does not overlap the first: brightness alone no longer tells where the evidence is,
    so a map that finds the digit has to have learnt what a digit looks like."""
    if distractor and canvas < 2 * 8 * scale:
        raise ValueError(f"pasted_digits: canvas={canvas} has no room for a distractor; expected at least {16 * scale}")
    digits = load_digits()
    order = np.random.default_rng(1234).permutation(len(digits.target))  # fixed train/test partition
    pool = order[:1400] if split == "train" else order[1400:]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    size = 8 * scale
    picks = rng.choice(pool, size=n)
    images = rng.uniform(0, noise, size=(n, canvas, canvas)).astype(np.float32)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i, idx in enumerate(picks):
        x0, y0 = rng.integers(0, canvas - size + 1, size=2)
        _paste(images[i], digits.images[idx], x0, y0, scale)
        boxes[i] = (x0, y0, x0 + size, y0 + size)
        if distractor:
            scrambled = rng.permutation(digits.images[rng.choice(pool)].ravel()).reshape(8, 8)
            while True:  # a spot clear of the digit (always exists: canvas >= 2 * size is checked below)
                u, v = rng.integers(0, canvas - size + 1, size=2)
                if u + size <= x0 or u >= x0 + size or v + size <= y0 or v >= y0 + size:
                    break
            _paste(images[i], scrambled, u, v, scale)
    rgb = np.repeat(images.clip(0, 255).astype(np.uint8)[..., None], 3, axis=3)
    return LocalisationSet(rgb, digits.target[picks].astype(np.int64), boxes, [str(d) for d in range(10)])


def _paste(canvas: np.ndarray, digit: np.ndarray, x0: int, y0: int, scale: int) -> None:
    """Draw an (8, 8) digit with values 0..16, upscaled `scale` times, onto a float canvas (brighter wins)."""
    big = np.kron(digit * (255.0 / 16.0), np.ones((scale, scale), dtype=np.float32))
    h, w = big.shape
    canvas[y0 : y0 + h, x0 : x0 + w] = np.maximum(canvas[y0 : y0 + h, x0 : x0 + w], big)


def shape_scenes(n: int, img_size: int = 64, split: str = "train", seed: int = 0) -> LocalisationSet:
    """One-object scenes of the embedded shapes generator (textured backgrounds), labelled by shape."""
    cfg = ShapesConfig(img_size=img_size, min_size=max(6, img_size // 5), max_size=max(8, img_size * 2 // 5))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7])
    images, labels, boxes = [], [], []
    for _ in range(n):
        scene = render_scene(rng, cfg, num_shapes=1)
        obj = scene.objects[0]
        images.append(scene.image)
        labels.append(SHAPES.index(obj.shape))
        boxes.append(obj.box)
    return LocalisationSet(np.stack(images), np.array(labels), np.array(boxes, dtype=np.float32), list(SHAPES))


def patch_centres(grid: tuple[int, int], img_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y) of each patch centre, each (gh, gw)."""
    gh, gw = grid
    ys = (torch.arange(gh) + 0.5) * img_size[0] / gh
    xs = (torch.arange(gw) + 0.5) * img_size[1] / gw
    return xs[None, :].expand(gh, gw), ys[:, None].expand(gh, gw)


def _inside(boxes: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    b = boxes[:, :, None, None]  # (B, 4, 1, 1) against (gh, gw) centres -> (B, gh, gw)
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])


def pointing_hits(maps: torch.Tensor, boxes: torch.Tensor | np.ndarray, img_size: tuple[int, int]) -> torch.Tensor:
    """(B,) True where the centre of the map's peak patch lies inside the box. maps (B, gh, gw), boxes (B, 4)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    B, gh, gw = maps.shape
    xs, ys = patch_centres((gh, gw), img_size)
    peak = maps.reshape(B, -1).argmax(dim=1)
    return _inside(boxes, xs, ys).reshape(B, -1).gather(1, peak[:, None]).squeeze(1)


def chance_rate(boxes: torch.Tensor | np.ndarray, grid: tuple[int, int], img_size: tuple[int, int]) -> float:
    """The hit rate of a peak drawn uniformly at random over the patches: mean fraction of patch centres in the box."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    xs, ys = patch_centres(grid, img_size)
    return _inside(boxes, xs, ys).float().mean().item()
