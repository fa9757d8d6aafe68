"""Image file IO for the data layer: decode any PIL image to RGB uint8, find image files, scan for unreadable ones."""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ..errors import CorruptImageError, DatasetNotFoundError

SKIP_HINT = "Set data.skip_corrupt: true to skip unreadable files (they are counted and logged)"

# Integer modes wider than 8 bits (16-bit PNG/TIFF). PIL's convert("RGB") clips them at 255, which turns
# most of a 16-bit image white, so they are rescaled to 0..255 by hand instead.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _decode(path: str) -> Image.Image:
    """Open and fully decode `path`; raises whatever PIL raises (truncated data is an error, not padded)."""
    image = Image.open(path)
    image.load()
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8. Alpha is dropped, as torchvision's and timm's loaders do."""
    if image.mode in _WIDE_MODES:
        gray = np.asarray(image).astype(np.float32)  # (H, W), 0..65535
        gray = np.clip(np.round(gray / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL asks for this step for palettes with transparency
    return np.asarray(image.convert("RGB"))


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, whatever its mode (L, LA, P, RGBA, I;16, CMYK ...).

    Raises DatasetNotFoundError for a missing file and CorruptImageError, naming the file, for anything
    PIL cannot decode completely (truncated JPEG, random bytes, empty file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path}: file not found; expected an image file at this path")
    try:
        return _to_rgb(_decode(path))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, EOFError ... depending on the format
        raise CorruptImageError(
            f"{path}: cannot decode image ({_reason(err)}); expected a readable image file. {SKIP_HINT}"
        ) from err


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def _check(path: str) -> str | None:
    """None if `path` decodes completely, else a short reason."""
    if not os.path.isfile(path):
        return "file not found"
    try:
        _decode(path).close()
    except Exception as err:  # same as load_rgb: any decode failure counts as unreadable
        return _reason(err)
    return None


def scan_images(paths: Sequence[str], workers: int | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Decode every file once on a thread pool (PIL releases the GIL while decoding).

    Args:
        paths: image files to check.
        workers: threads; None uses ThreadPoolExecutor's default (CPU count + 4, at most 32).

    Returns:
        (good, bad): the readable paths in their original order, and (path, reason) for the others.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(_check, paths))
    good = [p for p, reason in zip(paths, reasons) if reason is None]
    bad = [(p, reason) for p, reason in zip(paths, reasons) if reason is not None]
    return good, bad


def list_images(directory: str | os.PathLike, field: str = "data.predict_dir") -> list[str]:
    """All image files under `directory`, recursively, sorted; errors name `field` if there are none."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DatasetNotFoundError(f"{directory} ({field}): folder not found; expected a folder of images")
    paths = sorted(
        os.path.join(parent, name)
        for parent, _, names in os.walk(directory, followlinks=True)
        for name in names
        if has_file_allowed_extension(name, IMG_EXTENSIONS)
    )
    if not paths:
        raise DatasetNotFoundError(
            f"{directory} ({field}): no images found; expected files ending in {', '.join(IMG_EXTENSIONS)}"
        )
    return paths


# Modes whose pixels are gray by construction; any other mode (RGB, P, CMYK ...) is decoded to find out.
_GRAY_MODES = ("1", "L", "LA", "F", "La", *_WIDE_MODES)


@dataclass(frozen=True)
class ImageStats:
    """What a folder of images looks like, measured on a seeded sample: the facts default pipelines and the
    in-memory cache are chosen from (and that `vitkit check-data` prints)."""

    images: int  # files in the folder
    sampled: int  # files whose header was read
    median_size: tuple[int, int]  # (width, height) of the sample
    min_size: tuple[int, int]
    max_size: tuple[int, int]
    modes: dict[str, int]  # PIL mode -> files of the sample
    grayscale: bool  # every sampled image is gray: a gray mode, or R == G == B after decoding
    mean_pixels: float  # mean width * height of the sample

    @property
    def short_side(self) -> int:
        return min(self.median_size)

    @property
    def decoded_bytes(self) -> int:
        """Bytes the whole folder takes decoded to uint8 (one channel if gray, else three)."""
        return round(self.images * self.mean_pixels * (1 if self.grayscale else 3))

    def describe(self) -> str:
        (w, h), (w0, h0), (w1, h1) = self.median_size, self.min_size, self.max_size
        modes = ", ".join(f"{m} {n}" for m, n in sorted(self.modes.items(), key=lambda kv: -kv[1]))
        colour = "grayscale" if self.grayscale else "colour"
        return (f"{self.images} images, median {w}x{h} px (min {w0}x{h0}, max {w1}x{h1}; {self.sampled} sampled), "
                f"{colour} (modes: {modes}), {self.decoded_bytes / 2**20:.1f} MiB decoded")


def image_stats(paths: Sequence[str], sample: int = 512, decode: int = 32, seed: int = 0) -> ImageStats:
    """Sizes and modes of a seeded sample of `paths` (headers only), and whether the images are gray (the
    first `decode` sampled files of a colour mode are decoded: a gray photo saved as RGB counts as gray).

    Unreadable files are left out of the sample; loading reports them (or `skip_corrupt` counts them).
    """
    if not paths:
        raise DatasetNotFoundError("image_stats: no image files given; expected at least one")
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), size=min(sample, len(paths)), replace=False))]
    with ThreadPoolExecutor() as pool:
        headers = [h for h in pool.map(_header, chosen) if h is not None]
        colour = [p for p, mode, _ in headers if mode not in _GRAY_MODES][:decode]
        gray_decoded = all(pool.map(_is_gray, colour))
    if not headers:  # not one sampled file opens: the first one's own error names it and says how to skip
        load_rgb(chosen[0])
        raise CorruptImageError(f"{chosen[0]}: cannot be opened; expected a readable image file. {SKIP_HINT}")
    sizes = np.array([size for _, _, size in headers])  # (n, 2) width, height
    modes: dict[str, int] = {}
    for _, mode, _ in headers:
        modes[mode] = modes.get(mode, 0) + 1
    order = np.argsort(sizes.prod(axis=1))
    return ImageStats(
        images=len(paths), sampled=len(headers),
        median_size=tuple(int(v) for v in np.median(sizes, axis=0)),
        min_size=tuple(int(v) for v in sizes[order[0]]), max_size=tuple(int(v) for v in sizes[order[-1]]),
        modes=modes, grayscale=gray_decoded, mean_pixels=float(sizes.prod(axis=1).mean()),
    )


def _header(path: str) -> tuple[str, str, tuple[int, int]] | None:
    """(path, mode, (width, height)) from the file's header, or None if PIL cannot open it."""
    try:
        with Image.open(path) as image:
            return path, image.mode, image.size
    except Exception:  # noqa: BLE001 - reported when the file is loaded
        return None


def _is_gray(path: str) -> bool:
    try:
        rgb = load_rgb(path)
    except CorruptImageError:
        return True  # says nothing about colour; loading reports it
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def decode_all(paths: Sequence[str], workers: int | None = None) -> list[np.ndarray]:
    """Decode every file once on a thread pool into uint8 arrays: (H, W) for gray images (R == G == B), else
    (H, W, 3). Raises as `load_rgb` does, naming the first file that cannot be decoded."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_decode_compact, paths))


def _decode_compact(path: str) -> np.ndarray:
    rgb = load_rgb(path)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])  # a third of the memory; expanded again when served
    return rgb
