"""The visual question answering data module: questions and answers about images (a JSON list, or the
embedded shapes scenes' questions), answers as classes, questions tokenized."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError
from .captioning import (
    _COMMON_ARGS_DOC,
    ImageTextDataset,
    Question,
    Split,
    _check_files_exist,
    _ImageTextData,
    _load_json,
    read_vqa,
)
from .shapes import DEFAULT_ROOT as SHAPES_ROOT
from .text import LongLines

log = logging.getLogger("vitkit")


class VQADataModule(_ImageTextData):
    """Visual question answering data for `vitkit.tasks.VisualQA`: answers are classes, taken from the
    training answers (most frequent first, at most `max_answers`); a val/test answer outside them is a label
    of -1 (no loss) and counts as wrong.

    Batches: `images` (B, 3, H, W), `question` (B, Q) token ids (no BOS/EOS), `label` (B,), and the text:
    `question_text`, `answers` (normalised references), `path`.

    Args:""" + _COMMON_ARGS_DOC + """
        max_answers: most answer classes.
        predict_file: JSON list of {"image": path, "question": text} to answer for `predict` (paths relative
            to the file's folder); None answers the test questions.
    """

    kind = "vqa"

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
        max_len: int = 24,
        long_lines: LongLines = "error",
        img_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        train_transforms: list[dict] | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        max_answers: int = 1000,
        predict_file: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_common()
        self._answers: list[str] | None = None

    # -- answer classes (linked to the task as num_classes / class_names) --
    @property
    def class_names(self) -> list[str]:
        if self._answers is None:
            counts = Counter(a for q in self._split_items("train") for a in q.answers)
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            self._answers = [a for a, _ in ranked[: self.hparams.max_answers]]
        return list(self._answers)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _read(self, split: Split) -> list[Question]:
        return read_vqa(*self._source(split))

    def _training_texts(self) -> list[str]:
        return [q.question for q in self._split_items("train")]

    def _row(self, q: Question, index: dict[str, int]) -> dict:
        label = Counter(q.answers).most_common(1)[0][0] if q.answers else None  # the majority answer
        ids = self.guard(self.tokenizer.encode(q.question), self.hparams.max_len, q.where, "question")
        return {"question": ids, "label": index.get(label, -1), "question_text": q.question, "answers": list(q.answers),
                "path": q.path}

    def build_dataset(self, split: str) -> Dataset:
        index = {a: i for i, a in enumerate(self.class_names)}
        if split == "predict":
            questions = self._predict_questions() if self.hparams.predict_file else self._split_items("test")
        else:
            questions = self._split_items(split)
        rows = [self._row(q, index) for q in questions]
        self.guard.report(split)
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageTextDataset([q.path for q in questions], rows, transform)

    def _predict_questions(self) -> list[Question]:
        path = Path(self.hparams.predict_file)
        data = _load_json(path, "data.predict_file")
        if not isinstance(data, list) or not data:
            raise DataError(f"{path}: expected a non-empty JSON list of {{image, question}} objects")
        out = []
        for i, row in enumerate(data):
            ok = isinstance(row, dict) and isinstance(row.get("image"), str) and str(row.get("question", "")).strip()
            if not ok:
                raise DataError(f"{path}: entry {i} needs 'image' (a path) and a non-empty 'question'; found {row!r}")
            image = row["image"] if os.path.isabs(row["image"]) else str(path.parent / row["image"])
            out.append(Question(image, row["image"], row["question"].strip(), (), f"{path}: entry {i}"))
        _check_files_exist(sorted({q.path for q in out}), path)
        return out
