"""Image file IO for the data layer: decode any PIL image to RGB uint8, find image files, scan for unreadable ones."""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

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
