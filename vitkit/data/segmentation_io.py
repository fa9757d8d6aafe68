"""Segmentation file readers: mask PNGs as class-index arrays (checked against their image and the class
count), ADE20K's reduce_zero_label, image/mask folder pairing and `classes.txt` lists. The data module that
lists each dataset's splits is `vitkit.data.segmentation`, which re-exports every name here."""
from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import CorruptImageError, DataError, DatasetNotFoundError
from .files import read_text
from .images import list_images

log = logging.getLogger("vitkit")

SegSample = tuple[str, str]  # (image path, mask path)

_MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")


# ---------------------------------------------------------------------------------------------- masks
def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as an (H, W) uint8 array of class indices: 8-bit gray (L) or palette (P, as VOC's) PNGs give
    their pixel values / palette indices; a colour (RGB) mask is an error, not a guess."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path}: mask file not found; expected a single-channel PNG of class indices")
    try:
        image = Image.open(path)
        image.load()
    except Exception as err:  # PIL raises many types for undecodable files
        raise CorruptImageError(
            f"{path}: cannot decode mask ({type(err).__name__}: {err}); expected a readable PNG"
        ) from err
    if image.mode not in _MASK_MODES:
        raise DataError(
            f"{path}: mask has mode {image.mode} ({len(image.getbands())} channels); expected a single-channel PNG "
            "of class indices (mode L or P), not a colour rendering of the classes"
        )
    mask = np.array(image)  # a writable copy (torch warns about read-only arrays)
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(
                f"{path}: mask values span {int(mask.min())}..{int(mask.max())}; expected 8-bit class indices 0..255"
            )
        mask = mask.astype(np.uint8)
    return mask


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """ADE20K's convention: label 0 ("other objects") becomes the ignore value 255, labels 1..150 become 0..149
    (255 stays 255)."""
    out = mask.astype(np.int16) - 1
    out[(mask == 0) | (mask == 255)] = 255
    return out.astype(np.uint8)


def check_mask(mask: np.ndarray, mask_path: str, image_hw: tuple[int, int], image_path: str, num_classes: int,
               ignore_index: int, hint: str = "") -> None:
    """DataError naming both files when the mask's size differs from its image's, or when it holds a label
    >= num_classes that is not the ignore value."""
    if mask.shape[:2] != tuple(image_hw):
        (mh, mw), (ih, iw) = mask.shape[:2], image_hw
        raise DataError(
            f"{mask_path}: mask is {mw}x{mh} (width x height) but its image {image_path} is {iw}x{ih}; "
            "expected a mask of the same size as its image"
        )
    bad = (mask >= num_classes) & (mask != ignore_index)
    if bad.any():
        values = np.unique(mask[bad]).tolist()
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise DataError(
            f"{mask_path} (mask of {image_path}): label value(s) {shown} in {int(bad.sum())} pixel(s) are >= "
            f"num_classes={num_classes} and not the ignore value {ignore_index}; expected class indices "
            f"0..{num_classes - 1} or {ignore_index}{hint}"
        )


# ---------------------------------------------------------------------------------------------- folders
def pair_folder(images_dir: str, masks_dir: str) -> list[SegSample]:
    """(image, mask) pairs: each image under `images_dir` with the mask of the same relative name under
    `masks_dir` (`.png`, or the image's own extension). Images without a mask are one DataError listing them."""
    images = list_images(images_dir, field="images folder")
    pairs, missing = [], []
    for path in images:
        rel = os.path.splitext(os.path.relpath(path, images_dir))[0]
        candidates = [os.path.join(masks_dir, rel + ext) for ext in (".png", os.path.splitext(path)[1])]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            missing.append((path, candidates[0]))
        else:
            pairs.append((path, found))
    if missing:
        listed = "; ".join(f"{img} (no {mask})" for img, mask in missing[:5])
        more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{images_dir}: {len(missing)} of {len(images)} image(s) have no mask file: {listed}{more}; expected one "
            f"mask per image in {masks_dir} with the same name and a .png extension"
        )
    orphans = _orphan_masks(masks_dir, {os.path.normpath(m) for _, m in pairs})
    if orphans:
        log.warning("%s: %d mask(s) without an image are not used, e.g. %s", masks_dir, len(orphans), orphans[0])
    return pairs


def _orphan_masks(masks_dir: str, used: set[str]) -> list[str]:
    if not os.path.isdir(masks_dir):
        return []
    return sorted(
        os.path.join(parent, n) for parent, _, names in os.walk(masks_dir) for n in names
        if n.lower().endswith(IMG_EXTENSIONS) and os.path.normpath(os.path.join(parent, n)) not in used
    )


def read_class_names(path: str) -> list[str]:
    """One class name per line (index = line number, 0-based); blank lines at the end are dropped."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"{path}: class list not found; expected a text file with one class name per line (line i = class index i)"
        )
    text = read_text(path, "a text file with one class name per line (line i = class index i)")
    names = [line.strip() for line in text.rstrip("\n").splitlines()]
    if not names or any(not n for n in names):
        raise DataError(f"{path}: found {len(names)} line(s), some empty; expected one non-empty class name per line")
    if len(names) > 255:
        raise DataError(
            f"{path}: {len(names)} classes; expected at most 255 (masks are 8-bit, 255 is the ignore value)"
        )
    return names
