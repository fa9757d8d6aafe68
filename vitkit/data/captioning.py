"""Image captioning and visual question answering data: COCO-captions JSON (Chen et al. 2015) and a simple VQA
JSON, read with errors that name the file and entry, on the embedded shapes scenes by default (captions and
question/answer pairs written by `vitkit.data.shapes`).

    captions: {"images": [{"id", "file_name"}...], "annotations": [{"image_id", "caption"}...]}
    VQA:      [{"file_name", "question", "answer"} ...]   ("answers": [...] for several human answers;
              "image_id" optional; file_name relative to the split's image folder)

Images are resized to `img_size` with no flips by default (shapes captions name objects left to right).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import albumentations as A
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, DatasetNotFoundError, require
from .base import VitkitDataModule
from .files import read_json
from .images import list_images, load_rgb
from .shapes import DEFAULT_ROOT as SHAPES_ROOT
from .shapes import ShapesConfig, generate_shapes
from .text import LengthGuard, LongLines, TextCollate, TextTokenizer, TokenizerState
from .transforms import build_transforms

log = logging.getLogger("vitkit")
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def normalize_answer(text: str) -> str:
    """VQA answer normalisation (a subset of Antol et al.'s): lower case, no punctuation, no articles."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


# ------------------------------------------------------------------------------------------ readers
@dataclass(frozen=True)
class CaptionedImage:
    path: str
    image_id: int | str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    path: str
    image_id: int | str
    question: str
    answers: tuple[str, ...]  # one or several (human) answers, normalised
    where: str


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise DatasetNotFoundError(f"{what} file {path} not found; expected a JSON file (see datasets/README.md)")
    return read_json(path, f"a {what} JSON file (see datasets/README.md)")


def read_captions(json_path: str | os.PathLike, image_dir: str | os.PathLike) -> tuple[list[CaptionedImage], int]:
    """COCO-captions JSON -> images with their reference captions, and the number of images without any
    caption (left out, and reported by the caller). Names the file and entry of anything malformed."""
    path = Path(json_path)
    data = _load_json(path, "captions")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise DataError(f"{path}: expected a COCO captions object with 'images' and 'annotations' lists")
    files = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] has no 'id' or 'file_name'; found {img!r}")
        files[img["id"]] = str(Path(image_dir) / img["file_name"])
    captions: dict = {k: [] for k in files}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise DataError(f"{where} has no 'caption' text; found {ann!r}")
        if ann.get("image_id") not in files:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not among the file's images")
        if not ann["caption"].strip():
            raise DataError(f"{where} (image_id {ann['image_id']}): empty caption; expected text")
        captions[ann["image_id"]].append(ann["caption"].strip())
    items = [CaptionedImage(files[k], k, tuple(c)) for k, c in captions.items() if c]
    _check_files_exist([it.path for it in items], path)
    return items, len(files) - len(items)


def read_vqa(json_path: str | os.PathLike, image_dir: str | os.PathLike) -> list[Question]:
    """Simple VQA JSON -> questions; each entry needs `file_name`, `question` and `answer` (or `answers`)."""
    path = Path(json_path)
    data = _load_json(path, "VQA")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{file_name, question, answer}} objects; "
                        f"found {type(data).__name__}")
    out = []
    for i, row in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with file_name, question and answer; found {row!r}")
        missing = [k for k in ("file_name", "question") if not isinstance(row.get(k), str)]
        answers = row.get("answers", [row["answer"]] if isinstance(row.get("answer"), str) else None)
        if missing or not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            missing += [] if isinstance(answers, list) and answers else ["answer (or answers)"]
            raise DataError(f"{where}: no {', '.join(missing)}; found keys {sorted(row)}")
        if not row["question"].strip():
            raise DataError(f"{where}: empty question; expected text")
        file = str(Path(image_dir) / row["file_name"])
        out.append(Question(file, row.get("image_id", row["file_name"]), row["question"].strip(),
                            tuple(normalize_answer(a) for a in answers), where))
    if not out:
        raise DataError(f"{path}: no questions; expected at least one entry")
    _check_files_exist(sorted({q.path for q in out}), path)
    return out


def _check_files_exist(paths: Sequence[str], source: Path) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DatasetNotFoundError(f"{source}: {len(missing)} image file(s) it names do not exist: {shown}; "
                                   f"expected them under the split's image folder")


# ------------------------------------------------------------------------------------------ datasets
class ImageTextDataset(Dataset):
    """Items: dict with `images` (3, H, W) and whatever per-item fields `rows` hold (token ids stay lists)."""

    def __init__(self, paths: list[str], rows: list[dict], transform: A.Compose) -> None:
        self.paths, self.rows, self.transform = paths, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"images": self.transform(image=load_rgb(self.paths[i]))["image"], **self.rows[i]}


class ImageTextCollate(TextCollate):
    """Stack images, pad id lists (`tgt`, `question`) with `pad_id`, tensor `label`, keep other fields as lists."""

    pad, stack, long = ("tgt", "question"), ("images",), ("label",)


# ------------------------------------------------------------------------------------------ shared set-up
class _ImageTextData(TokenizerState, VitkitDataModule):
    """What the captioning and VQA data modules share: split sources (the shapes scenes or given files), the
    tokenizer (trained, loaded, or restored from a checkpoint), image transforms and loaders."""

    kind = "captions"

    def _init_common(self) -> None:
        h = self.hparams
        require(h.batch_size >= 1, "data.batch_size", h.batch_size, "a positive integer")
        require(h.img_size >= 1, "data.img_size", h.img_size, "a positive number of pixels")
        require(h.max_len >= 3, "data.max_len", h.max_len, "3 or more")
        shared = Path(h.root).resolve() == Path(SHAPES_ROOT).resolve()
        if h.train_json is None and shared and self._shapes_config() != ShapesConfig():
            raise ConfigError(f"data.root {h.root} holds the default shapes set shared with segmentation and "
                              f"detection; generate {self._shapes_config()} under another data.root")
        self.guard = LengthGuard(h.long_lines)
        resize = [A.Resize(h.img_size, h.img_size)]
        self.train_transform = build_transforms(h.train_transforms, resize, "data.train_transforms", h.mean, h.std)
        self.eval_transform = build_transforms(None, resize, "data.eval_transforms", h.mean, h.std)
        self._tokenizer: TextTokenizer | None = None
        self._file_tokenizer: TextTokenizer | None = None
        self._items: dict[str, list] = {}

    def __str__(self) -> str:  # Lightning's default builds every dataloader (see Seq2SeqDataModule.__str__)
        return f"{type(self).__name__}({self.hparams.train_json or self.hparams.root})"

    def _shapes_config(self) -> ShapesConfig:
        n = self.hparams.shapes_num_train
        return ShapesConfig.parse(self.hparams.shapes, legacy="shapes_num_train",
                                  legacy_value=None if n is None else {"num_train": n})

    def _source(self, split: Split) -> tuple[Path, Path]:
        """(annotation JSON, image folder) of a split: given files, else the shapes scenes."""
        h = self.hparams
        if h.train_json is None:
            root = generate_shapes(h.root, self._shapes_config())
            return root / "annotations" / f"{self.kind}_{split}.json", root / split / "images"
        given = {"train": (h.train_json, h.train_images), "val": (h.val_json, h.val_images),
                 "test": (h.test_json or h.val_json, h.test_images or h.val_images)}[split]
        if given[0] is None:
            raise ConfigError(f"data.{split}_json is not set; expected the {split} annotation file (with "
                              f"data.train_json given, every split needs its own file; test falls back to val)")
        return Path(given[0]), Path(given[1] or Path(given[0]).parent)

    def prepare_data(self) -> None:
        trainer = getattr(self, "trainer", None)
        given = self.hparams.get("predict_dir") or self.hparams.get("predict_file")
        if self.hparams.train_json is None and not (given and trainer is not None and trainer.state.fn == "predict"):
            generate_shapes(self.hparams.root, self._shapes_config())  # not needed to predict on given images

    # -- tokenizer (TokenizerState): trained on the training text, given as a file, or restored --
    def _train_tokenizer(self) -> TextTokenizer:
        texts = self._training_texts()
        tok = TextTokenizer.train(texts, self.hparams.vocab_size)
        log.info("trained a byte-level BPE of %d tokens on %d training %s", tok.vocab_size, len(texts), self.kind)
        return tok

    def _split_items(self, split: Split) -> list:
        if split not in self._items:
            self._items[split] = self._read(split)
        return self._items[split]

    def setup(self, stage: str | None = None) -> None:
        pass  # splits are built when a loader asks: a checkpoint's tokenizer may replace the trained one first

    def collate_fn(self, split: str) -> ImageTextCollate:
        return ImageTextCollate(self.tokenizer.pad_id)


_COMMON_ARGS_DOC = """
        root: folder of the embedded shapes scenes (generated on first use).
        shapes: without train_json, ShapesConfig fields of the scenes made there, e.g. {num_train: 10000} (the default
            folder keeps the default set). `shapes_num_train: N` is the older spelling of {num_train: N}.
        train_json: training annotations; None uses the shapes scenes. With it, val_json is needed too.
        train_images: folder the training file names are relative to (default: the JSON's folder).
        val_json: validation annotations.
        val_images: validation image folder.
        test_json: test annotations (None: the validation ones).
        test_images: test image folder.
        tokenizer: a Hugging Face tokenizer.json; None trains a byte-level BPE on the training text. Saved in
            the checkpoint and as `tokenizer.json` in the run folder.
        vocab_size: size of the BPE to train (linked to the model).
        max_len: most tokens of a text plus BOS/EOS (linked to the model).
        long_lines: "error" stops at a text longer than max_len naming it; "truncate" cuts and counts.
        img_size: side of the square images (linked to the model's encoder).
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        train_transforms: albumentations steps for training (default: resize only); Normalize is appended.
        mean: per-channel mean of Normalize.
        std: per-channel standard deviation of Normalize."""


class CaptioningDataModule(_ImageTextData):
    """Image captioning data for `vitkit.tasks.ImageCaptioner`.

    Training batches hold one (image, caption) pair per item: `images` (B, 3, H, W) and `tgt` (B, T) =
    [bos, caption..., eos] padded. Validation/test batches hold one item per image, with `refs` (all its
    reference captions) and `tgt` from the first. Predict batches hold `images` and `path`.

    Args:""" + _COMMON_ARGS_DOC + """
        predict_dir: folder of images to caption for `predict` (None: the test images).
    """

    kind = "captions"

    def __init__(
        self,
        root: str = SHAPES_ROOT,
        shapes: dict[str, int] | None = None,
        shapes_num_train: int | None = None,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 1000,
        max_len: int = 32,
        long_lines: LongLines = "error",
        img_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        train_transforms: list[dict] | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_common()

    def _read(self, split: Split) -> list[CaptionedImage]:
        json_path, images = self._source(split)
        items, without = read_captions(json_path, images)
        if without:
            log.warning("%s: %d image(s) without captions left out", json_path, without)
        return items

    def _training_texts(self) -> list[str]:
        return [c for it in self._split_items("train") for c in it.captions]

    def _encode(self, caption: str, where: str) -> list[int]:
        tok = self.tokenizer
        return [tok.bos_id, *self.guard(tok.encode(caption), self.hparams.max_len - 2, where, "caption"), tok.eos_id]

    def build_dataset(self, split: str) -> Dataset:
        if split == "predict":
            if self.hparams.predict_dir is None:
                items = self._split_items("test")
                paths = [it.path for it in items]
                return ImageTextDataset(paths, [{"path": p} for p in paths], self.eval_transform)
            paths = list_images(self.hparams.predict_dir)
            return ImageTextDataset(paths, [{"path": p} for p in paths], self.eval_transform)
        items = self._split_items(split)
        if split == "train":
            pairs = [(it, c) for it in items for c in it.captions]
            rows = [{"tgt": self._encode(c, f"{it.path} caption {c!r}"), "image_id": it.image_id} for it, c in pairs]
            paths = [it.path for it, _ in pairs]
            transform = self.train_transform
        else:
            rows = [{"tgt": self._encode(it.captions[0], f"{it.path} caption {it.captions[0]!r}"),
                     "refs": list(it.captions), "image_id": it.image_id, "path": it.path} for it in items]
            paths, transform = [it.path for it in items], self.eval_transform
        self.guard.report(split)
        return ImageTextDataset(paths, rows, transform)


def __getattr__(name: str):
    if name == "VQADataModule":  # moved to `vitkit.data.vqa`; old imports still resolve
        from .vqa import VQADataModule

        return VQADataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
