"""The sequence-to-sequence data module: (source, target) text pairs from TSV/JSONL files or the embedded
numbers/dates task, encoded with the tokenizer trained on them (or given, or restored from a checkpoint)."""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from ..errors import DataError, require
from .base import VitkitDataModule
from .numbers import DEFAULT_ROOT as NUMBERS_ROOT
from .numbers import NumbersConfig, generate_numbers
from .text import (
    SPECIALS,
    LengthGuard,
    LineDataset,
    LongLines,
    PairDataset,
    TextCollate,
    TextPair,
    TextTokenizer,
    TokenizerState,
    read_lines,
    read_pairs,
)

log = logging.getLogger("vitkit")


# ------------------------------------------------------------------------------------------ data module
Stage = Literal["fit", "validate", "test", "predict"]


class Seq2SeqDataModule(TokenizerState, VitkitDataModule):
    """Parallel text for `vitkit.tasks.Seq2Seq`: TSV or JSONL files, or the embedded numbers/dates task.

    Batches are dicts: `src` (B, S) and `tgt` (B, T) int64 padded with the tokenizer's pad id (`tgt` is
    [bos, target..., eos]); `source` and `target` hold the raw text (references for BLEU are the text as
    written, never a detokenised copy). Predict batches have `src`, `source` and `line` (1-based).

    Args:
        train_file: training pairs, `.tsv` (source<TAB>target) or `.jsonl`; None uses the embedded
            numbers/dates task, generated under `root` on first use.
        val_file: validation pairs; None holds out `val_fraction` of the training file (the embedded task
            has its own split).
        test_file: test pairs; None tests on the validation pairs.
        root: folder of the embedded task.
        num_train: pairs in the embedded task's training split (its val/test have 1,000/2,000).
        source_field: JSONL key of the source text.
        target_field: JSONL key of the target text.
        tokenizer: a Hugging Face tokenizer.json to use; None trains a byte-level BPE of `vocab_size` tokens
            on the training sources and targets. Either way the tokenizer is saved in the checkpoint and as
            `tokenizer.json` in the run folder, so `predict` needs nothing else.
        vocab_size: size of the BPE to train; the model's vocabulary (linked: the tokenizer file's size if given).
        max_len: most tokens of a source, and of a target plus BOS/EOS (linked to the model's max_len).
        long_lines: "error" (default) stops at a line longer than `max_len`, naming it; "truncate" cuts such
            lines and reports how many were cut.
        val_fraction: share of `train_file` held out when there is no `val_file`.
        batch_size: pairs per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the held-out split.
        predict_file: lines to translate for `predict`, or "-" for standard input.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        root: str = NUMBERS_ROOT,
        num_train: int = 100_000,
        source_field: str = "source",
        target_field: str = "target",
        tokenizer: str | None = None,
        vocab_size: int = 1000,
        max_len: int = 128,
        long_lines: LongLines = "error",
        val_fraction: float = 0.05,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        predict_file: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        require(max_len >= 3, "data.max_len", max_len, "3 or more (a target needs BOS, a token and EOS)")
        require(tokenizer is not None or vocab_size > len(SPECIALS) + 256, "data.vocab_size", vocab_size,
                 f"more than {len(SPECIALS) + 256} (the special tokens and the 256 byte symbols of the BPE)")
        require(batch_size >= 1, "data.batch_size", batch_size, "a positive integer")
        require(0 < val_fraction < 1, "data.val_fraction", val_fraction, "a fraction strictly between 0 and 1")
        self.guard = LengthGuard(long_lines)
        self._tokenizer: TextTokenizer | None = None
        self._file_tokenizer: TextTokenizer | None = None
        self._pairs: dict[str, list[TextPair]] = {}

    def __str__(self) -> str:
        # Lightning's default builds every dataloader to describe them (jsonargparse prints it when a link
        # does not apply): that would train a tokenizer and read all data just for a log line
        source = self.hparams.train_file or f"embedded numbers/dates task in {self.hparams.root}"
        return f"{type(self).__name__}({source})"

    def _train_tokenizer(self) -> TextTokenizer:
        pairs = self._split_pairs("train")
        texts = (t for p in pairs for t in (p.source, p.target))
        tok = TextTokenizer.train(texts, self.hparams.vocab_size)
        log.info("trained a byte-level BPE of %d tokens on %d training pairs", tok.vocab_size, len(pairs))
        return tok

    # -- data --
    def prepare_data(self) -> None:
        if self.hparams.train_file is None and not self._predicting_a_file():
            generate_numbers(self.hparams.root, self._numbers_config())

    def _predicting_a_file(self) -> bool:
        """`predict` on given lines with a checkpoint's tokenizer needs no training data."""
        trainer = getattr(self, "trainer", None)
        return self.hparams.predict_file is not None and trainer is not None and trainer.state.fn == "predict"

    def _numbers_config(self) -> NumbersConfig:
        return NumbersConfig(num_train=self.hparams.num_train)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            if self.hparams.predict_file is None:
                return  # predicts on the test split
            self._lines = read_lines(self.hparams.predict_file)
            if not self._lines:
                raise DataError(f"data.predict_file {self.hparams.predict_file}: no lines; expected one input per line")

    def _split_pairs(self, split: str) -> list[TextPair]:
        if split not in self._pairs:
            self._pairs[split] = self._read_split(split)
        return self._pairs[split]

    def _read_split(self, split: str) -> list[TextPair]:
        h = self.hparams
        if h.train_file is None:
            root = generate_numbers(h.root, self._numbers_config())
            return read_pairs(root / f"{split}.tsv")
        if split == "test" and h.test_file is not None:
            return read_pairs(h.test_file, h.source_field, h.target_field)
        if split in ("val", "test") and h.val_file is not None:
            return read_pairs(h.val_file, h.source_field, h.target_field)
        train = read_pairs(h.train_file, h.source_field, h.target_field)
        if h.val_file is not None:
            return train
        order = np.random.default_rng(h.seed).permutation(len(train))
        n_val = max(1, round(h.val_fraction * len(train)))
        if n_val >= len(train):
            raise DataError(f"data.train_file {h.train_file}: {len(train)} pair(s) leave nothing to train on after "
                            f"holding out {n_val} for validation; add data or give data.val_file")
        keep = order[n_val:] if split == "train" else order[:n_val]
        return [train[i] for i in sorted(keep)]

    def build_dataset(self, split: str) -> Dataset:
        return self._encode_lines() if split == "predict" else self._encode_pairs(split)

    def _encode_pairs(self, split: str) -> PairDataset:
        tok, pairs, limit = self.tokenizer, self._split_pairs(split), self.hparams.max_len
        src_ids, tgt_ids = tok.encode_batch([p.source for p in pairs]), tok.encode_batch([p.target for p in pairs])
        src = [self.guard(ids, limit, p.where, "source") for ids, p in zip(src_ids, pairs)]
        tgt = [self.guard(ids, limit - 2, p.where, "target") for ids, p in zip(tgt_ids, pairs)]
        self.guard.report(split)
        return PairDataset(src, tgt, pairs, tok.bos_id, tok.eos_id)

    def _encode_lines(self) -> Dataset:
        if self.hparams.predict_file is None:
            test = self._encode_pairs("test")
            return LineDataset(test.src, [p.source for p in test.pairs])
        lines, name = self._lines, self.hparams.predict_file
        empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
        if empty:
            rank_zero_warn(f"{name}: {len(empty)} empty line(s) (line {', '.join(map(str, empty[:10]))}"
                           f"{' ...' if len(empty) > 10 else ''}) get empty outputs")
        ids = self.tokenizer.encode_batch([line.strip() for line in lines])
        src = [self.guard(s, self.hparams.max_len, f"{name}, line {i + 1}", "input") for i, s in enumerate(ids)]
        self.guard.report("predict")
        return LineDataset(src, lines)

    def collate_fn(self, split: str) -> TextCollate:
        return TextCollate(self.tokenizer.pad_id)
