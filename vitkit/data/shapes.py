"""The embedded "shapes" dataset: procedural scenes of coloured shapes on textured backgrounds.

One generator serves every task that needs images with structure and no network: semantic masks
(segmentation), COCO instances with boxes and polygons (detection), COCO-style captions (captioning) and
question/answer pairs (VQA). It writes the *standard* on-disk formats, so training on shapes exercises the
same readers as a real dataset:

    datasets/shapes/
      meta.json                      generator parameters (a folder made with other ones is rebuilt)
      classes.txt                    background, circle, square, triangle, star (mask value = line index)
      {train,val,test}/images/00000.png ...
      {train,val,test}/masks/00000.png ...     uint8 class index per pixel
      annotations/instances_{split}.json      COCO detection (bbox xywh, polygon segmentation)
      annotations/captions_{split}.json       COCO captions (several references per image)
      annotations/vqa_{split}.json            [{"image_id", "file_name", "question", "answer"}]

Shapes never overlap, so every mask pixel, box and sentence is unambiguous. `render_scene` draws one
scene in memory for code that needs scenes without files (e.g. single-object scenes for attention tests).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import require

SHAPES = ("circle", "square", "triangle", "star")
CLASSES = ("background", *SHAPES)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
DEFAULT_ROOT = os.path.join("datasets", "shapes")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ShapesConfig:
    """What `generate_shapes` makes; stored as meta.json so a folder made differently is detected."""

    img_size: int = 64
    min_shapes: int = 1
    max_shapes: int = 3
    min_size: int = 14  # shape diameter in pixels
    max_size: int = 30
    num_train: int = 2000
    num_val: int = 200
    num_test: int = 200
    seed: int = 0
    version: int = 1

    def count(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

    @classmethod
    def parse(cls, shapes: Mapping[str, int] | None, field: str = "data.shapes", legacy: str | None = None,
              legacy_value: Mapping[str, int] | None = None) -> ShapesConfig:
        """The `shapes:` option of every data module (fields to change from the defaults, e.g. `{num_train: 500}`)
        as a config; unknown keys are one error naming them. `legacy`/`legacy_value`: an older spelling of the
        same option (`shapes_config`, `shapes_num_train`), accepted when `shapes` is not also given."""
        if legacy_value is not None:
            require(not shapes, field, shapes, f"null when the older data.{legacy} is given; set only {field}")
            shapes, field = legacy_value, f"data.{legacy}"
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(shapes or {}) - set(known))
        require(not unknown, field, dict(shapes or {}), f"keys among {', '.join(known)}; unknown: {unknown}")
        return cls(**(shapes or {}))

    def folder(self, base: str | os.PathLike) -> str:
        """Where this scene set lives: `base` for the default set, `<base>-<hash of the config>` for another one,
        so that a changed set never rewrites the folder other tasks share."""
        if self == ShapesConfig():
            return str(base)
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"{base}-{digest}"


@dataclass
class ShapeObject:
    shape: str
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (exclusive right/bottom edge)
    polygon: list[float] = field(default_factory=list)  # x0, y0, x1, y1, ... (COCO polygon)
    area: int = 0  # mask pixels

    @property
    def label(self) -> int:
        """Class index in CLASSES (background = 0)."""
        return CLASSES.index(self.shape)


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 class index
    objects: list[ShapeObject]


# ---------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted textured background: stripes, checkerboard, smooth noise or a gradient, plus pixel noise."""
    base = rng.uniform(70, 170, size=3)
    other = np.clip(base + rng.uniform(-45, 45, size=3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # stripes at a random angle
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        t = (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == 1:  # checkerboard
        cell = int(rng.integers(4, 11))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    elif kind == 2:  # smooth noise: a coarse random grid upsampled
        coarse = rng.uniform(0, 1, size=(5, 5)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    else:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius r centred at (cx, cy), rotated by `angle` radians."""
    if shape == "circle":
        n, radii = 32, [r]
    elif shape == "square":
        n, radii = 4, [r]
    elif shape == "triangle":
        n, radii = 3, [r]
    else:  # five-pointed star: alternate outer and inner radius
        n, radii = 10, [r, r * 0.45]
    return [
        (cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / n),
         cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _place(rng: np.random.Generator, cfg: ShapesConfig, taken: list[tuple[float, float, float]]):
    """A centre and radius that keep the shape inside the image and clear of the others (None if no room)."""
    for _ in range(100):
        r = rng.uniform(cfg.min_size, cfg.max_size) / 2
        cx, cy = rng.uniform(r + 1, cfg.img_size - r - 1, size=2)
        if all(math.hypot(cx - x, cy - y) > r + rr + 2 for x, y, rr in taken):
            return cx, cy, r
    return None


def render_scene(rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig(), num_shapes: int | None = None) -> Scene:
    """Draw one scene: `num_shapes` (default: random in [min_shapes, max_shapes]) non-overlapping shapes."""
    size = cfg.img_size
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1)) if num_shapes is None else num_shapes
    canvas = Image.fromarray(_background(rng, size))
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    objects, taken = [], []
    for _ in range(n):
        spot = _place(rng, cfg, taken)
        if spot is None:
            break
        taken.append(spot)
        shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
        vertices = _polygon(shape, *spot, angle=rng.uniform(0, 2 * math.pi))
        draw.polygon(vertices, fill=COLORS[color])
        draw_mask.polygon(vertices, fill=CLASSES.index(shape))
        objects.append(ShapeObject(shape, color, (0, 0, 0, 0), [round(c, 2) for v in vertices for c in v]))
    mask_np = np.asarray(mask).copy()
    _finish_objects(objects, taken, mask_np, size)
    return Scene(np.asarray(canvas).copy(), mask_np, objects)


def _finish_objects(objects: list[ShapeObject], spots: list, mask: np.ndarray, size: int) -> None:
    """Boxes and areas from the rasterised mask (what a reader of the files will see), per object."""
    yy, xx = np.mgrid[0:size, 0:size]
    for obj, (cx, cy, r) in zip(objects, spots):
        inside = (np.hypot(xx - cx, yy - cy) <= r + 1.5) & (mask == obj.label)
        ys, xs = np.nonzero(inside)
        obj.box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        obj.area = int(inside.sum())


# ---------------------------------------------------------------- language


def _phrase(obj: ShapeObject) -> str:
    return f"a {obj.color} {obj.shape}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(objects: list[ShapeObject]) -> list[str]:
    """Reference captions, objects named left to right: 'a red circle and a blue star.' and variants."""
    if not objects:
        return ["an empty scene.", "there are no shapes."]
    ordered = [_phrase(o) for o in sorted(objects, key=lambda o: o.box[0] + o.box[2])]
    listed = _join(ordered)
    noun = "shape" if len(objects) == 1 else "shapes"
    return [f"{listed}.", f"{NUMBERS[len(objects)]} {noun}: {listed}.", f"a picture of {listed}."]


def questions(rng: np.random.Generator, objects: list[ShapeObject], per_image: int = 3) -> list[tuple[str, str]]:
    """Question/answer pairs about one scene; every answer is a single word."""
    pool = [("how many shapes are there?", NUMBERS[len(objects)])]
    for shape in SHAPES:
        same = [o for o in objects if o.shape == shape]
        pool.append((f"how many {shape}s are there?", NUMBERS[len(same)]))
        if len(same) == 1:
            pool.append((f"what color is the {shape}?", same[0].color))
    for color in COLORS:
        same = [o for o in objects if o.color == color]
        if len(same) == 1:
            pool.append((f"what shape is {color}?", same[0].shape))
    present = {(o.color, o.shape) for o in objects}
    if present:  # balanced yes/no: one true pair and one absent pair
        color, shape = sorted(present)[rng.integers(len(present))]
        pool.append((f"is there a {color} {shape}?", "yes"))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    color, shape = absent[rng.integers(len(absent))]
    pool.append((f"is there a {color} {shape}?", "no"))
    picks = rng.choice(len(pool), size=min(per_image, len(pool)), replace=False)
    return [pool[i] for i in sorted(picks)]


# ---------------------------------------------------------------- files


def generate_shapes(root: str | os.PathLike = DEFAULT_ROOT, cfg: ShapesConfig = ShapesConfig()) -> Path:
    """Write the shapes dataset under `root` unless a complete one made with `cfg` is already there."""
    root = Path(root)
    meta = root / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()) == asdict(cfg):
        return root
    root.mkdir(parents=True, exist_ok=True)
    if meta.exists():
        meta.unlink()  # rebuilt below; meta.json is written last so an interrupted run is redone
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for index, split in enumerate(SPLITS):
        _write_split(root, split, cfg, np.random.default_rng([cfg.seed, index]))
    meta.write_text(json.dumps(asdict(cfg), indent=2))
    return root


def _write_split(root: Path, split: str, cfg: ShapesConfig, rng: np.random.Generator) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, instances, caption_rows, vqa_rows = [], [], [], []
    for image_id in range(cfg.count(split)):
        scene = render_scene(rng, cfg)
        name = f"{image_id:05d}.png"
        Image.fromarray(scene.image).save(root / split / "images" / name)
        Image.fromarray(scene.mask).save(root / split / "masks" / name)
        images.append({"id": image_id, "file_name": name, "width": cfg.img_size, "height": cfg.img_size})
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            instances.append({
                "id": len(instances) + 1, "image_id": image_id, "category_id": obj.label,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": obj.area, "iscrowd": 0,
                "segmentation": [obj.polygon], "color": obj.color,
            })
        for text in captions(scene.objects):
            caption_rows.append({"id": len(caption_rows) + 1, "image_id": image_id, "caption": text})
        for question, answer in questions(rng, scene.objects):
            vqa_rows.append({"image_id": image_id, "file_name": name, "question": question, "answer": answer})
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES) if i > 0]
    info = {"description": f"vitkit procedural shapes, {split} split", "version": str(cfg.version)}
    _dump(root / "annotations" / f"instances_{split}.json",
          {"info": info, "images": images, "annotations": instances, "categories": categories})
    _dump(root / "annotations" / f"captions_{split}.json",
          {"info": info, "images": images, "annotations": caption_rows})
    _dump(root / "annotations" / f"vqa_{split}.json", vqa_rows)


def _dump(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload))
