"""Text data: a BPE tokenizer on Hugging Face `tokenizers` (Sennrich et al. 2016), readers of parallel TSV/JSONL
files with line-numbered errors, and the LightningDataModule of the sequence-to-sequence tasks (translation,
summarisation), whose embedded default is the numbers/dates task of `vitkit.data.numbers`.

Long lines: a line with more tokens than the model takes (`max_len`; the target gets `max_len - 2`, leaving
room for BOS and EOS) is an error naming the file and line, unless `long_lines="truncate"`, which cuts it and
reports how many were cut. Empty lines and empty fields are errors in data files; in `predict` input an
empty line gets an empty output line (counted in a warning) so outputs stay aligned with inputs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from ..errors import CheckpointError, ConfigError, DataError, DatasetNotFoundError, require
from .base import VitkitDataModule
from .files import read_text
from .numbers import DEFAULT_ROOT as NUMBERS_ROOT
from .numbers import NumbersConfig, generate_numbers

log = logging.getLogger("vitkit")

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3 of every tokenizer vitkit trains
# names looked up in a tokenizer file that was not trained here (BERT, T5, GPT-2, SentencePiece conventions)
_CANDIDATES = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|endoftext|>"),
    "bos": ("<bos>", "<s>", "[CLS]", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "[SEP]", "<|endoftext|>"),
}
LongLines = Literal["error", "truncate"]


# ------------------------------------------------------------------------------------------ tokenizer
class TextTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` with the three ids a decoder needs (pad, bos, eos).

    `train` builds a byte-level BPE (GPT-2's byte alphabet, so nothing is ever unknown and decoding gives
    back the exact text) that splits digits one by one, as PaLM and LLaMA do, so numbers are read digit by digit.
    `from_file` loads any `tokenizer.json`; `state()`/`from_state()` round-trip it through a checkpoint.
    """

    def __init__(self, tokenizer, pad: str = "<pad>", bos: str = "<bos>", eos: str = "<eos>", origin: str = "") -> None:
        self.tok = tokenizer
        self.specials = {"pad": pad, "bos": bos, "eos": eos}
        ids = {k: tokenizer.token_to_id(v) for k, v in self.specials.items()}
        missing = [f"{k} token {v!r}" for k, v in self.specials.items() if ids[k] is None]
        if missing:
            raise ConfigError(f"tokenizer {origin or ''}: has no {', '.join(missing)}; expected tokens for padding, "
                              f"start and end of sequence")
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.origin = origin

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2) -> TextTokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, origin=f"BPE trained here ({tok.get_vocab_size()} tokens)")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise DatasetNotFoundError(f"tokenizer file {path} not found (data.tokenizer); expected a Hugging Face "
                                       f"tokenizer.json, e.g. the one a vitkit run writes beside its checkpoints")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises its own Exception type for a malformed file
            raise DataError(f"tokenizer file {path}: cannot be read as a Hugging Face tokenizer.json ({err})") from err
        return cls(tok, **_find_specials(tok, str(path)), origin=str(path))

    def state(self) -> dict:
        return {"json": self.tok.to_str(), **self.specials}

    @classmethod
    def from_state(cls, state: dict, origin: str = "checkpoint") -> TextTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(state["json"]), state["pad"], state["bos"], state["eos"], origin=origin)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))
        return path

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        """Short hash of the vocabulary, merges and special tokens: equal fingerprints encode text alike."""
        vocab = sorted(self.tok.get_vocab().items())
        model = json.loads(self.tok.to_str()).get("model", {})
        payload = json.dumps([vocab, model.get("merges"), self.specials], sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, without BOS/EOS (a loaded tokenizer's own post-processing is not applied)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text, stopping at the first EOS and leaving out BOS/padding."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tok.decode([i for i in ids if i not in (self.pad_id, self.bos_id)], skip_special_tokens=False)


def _find_specials(tok, origin: str) -> dict[str, str]:
    vocab = tok.get_vocab()
    found = {k: next((c for c in names if c in vocab), None) for k, names in _CANDIDATES.items()}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        looked = "; ".join(f"{k}: {', '.join(_CANDIDATES[k])}" for k in missing)
        raise DataError(f"tokenizer file {origin}: no {'/'.join(missing)} token found (looked for {looked}); "
                        f"expected a tokenizer with padding, start and end tokens, or leave data.tokenizer unset to "
                        f"train one on the training data")
    return found


# ------------------------------------------------------------------------------------------ reading files
@dataclass(frozen=True)
class TextPair:
    source: str
    target: str
    where: str  # "file, line N" for messages


def read_pairs(path: str | os.PathLike, source_field: str = "source", target_field: str = "target") -> list[TextPair]:
    """(source, target) pairs from a `.tsv` (source<TAB>target per line) or `.jsonl` file (one JSON object
    per line with `source_field` and `target_field`; `.json` is read the same way). Any other extension is read as TSV.
    An empty line, a row with another number of fields, an empty field or invalid JSON is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"text file {path} not found; expected a .tsv (source<TAB>target) or .jsonl file")
    lines = read_text(path, "UTF-8 lines of source<TAB>target (.tsv) or JSON objects (.jsonl)").splitlines()
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    pairs = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}, line {number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; expected a source and a target on every line (delete the line)")
        fields = _json_fields(line, where, source_field, target_field) if jsonl else _tsv_fields(line, where)
        for name, value in zip(("source", "target"), fields):
            if not value.strip():
                raise DataError(f"{where}: empty {name}; expected text on both sides")
        pairs.append(TextPair(fields[0].strip(), fields[1].strip(), where))
    if not pairs:
        raise DataError(f"{path}: no lines; expected at least one source/target pair")
    return pairs


def _tsv_fields(line: str, where: str) -> tuple[str, str]:
    fields = line.split("\t")
    if len(fields) != 2:
        plural = "s" if len(fields) != 1 else ""
        raise DataError(f"{where}: found {len(fields)} tab-separated field{plural}; expected 2 (source<TAB>target)")
    return fields[0], fields[1]


def _json_fields(line: str, where: str, source_field: str, target_field: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg}); expected one object per line") from err
    if not isinstance(row, dict):
        raise DataError(f"{where}: found a JSON {type(row).__name__}; expected an object with "
                        f"'{source_field}' and '{target_field}'")
    missing = [f for f in (source_field, target_field) if not isinstance(row.get(f), str)]
    if missing:
        raise DataError(f"{where}: no text field {', '.join(repr(m) for m in missing)} (found keys {sorted(row)}); "
                        f"set data.source_field / data.target_field to the names your file uses")
    return row[source_field], row[target_field]


def read_lines(path: str) -> list[str]:
    """Lines to predict on (line endings removed), from a UTF-8 file or, for "-", from standard input."""
    if path == "-":
        return sys.stdin.read().splitlines()
    if not Path(path).is_file():
        raise DatasetNotFoundError(f"data.predict_file {path} not found; expected a text file with one input per line, "
                                   f"or '-' to read standard input")
    return read_text(path, "data.predict_file: UTF-8 text with one input per line").splitlines()


class LengthGuard:
    """Applies the long-line policy: `error` raises naming the line; `truncate` cuts and counts."""

    def __init__(self, policy: LongLines, field: str = "data.long_lines") -> None:
        if policy not in ("error", "truncate"):
            raise ConfigError(f"{field}: found {policy!r}; expected 'error' or 'truncate'")
        self.policy, self.field, self.truncated = policy, field, []

    def __call__(self, ids: list[int], limit: int, where: str, what: str) -> list[int]:
        if len(ids) <= limit:
            return ids
        if self.policy == "error":
            raise DataError(f"{where}: the {what} has {len(ids)} tokens; the model takes at most {limit} "
                            f"(data.max_len). Shorten the line, raise data.max_len, or set {self.field}: truncate")
        self.truncated.append(f"{where} ({what}, {len(ids)} -> {limit} tokens)")
        return ids[:limit]

    def report(self, split: str) -> None:
        if self.truncated:
            shown = "; ".join(self.truncated[:5]) + (" ..." if len(self.truncated) > 5 else "")
            rank_zero_warn(f"{split}: truncated {len(self.truncated)} over-long line(s) to the model's maximum: "
                           f"{shown}")
            self.truncated = []


# ------------------------------------------------------------------------------------------ datasets
class PairDataset(Dataset):
    """Encoded pairs: items are dicts with `src` (S,) and `tgt` (T + 2,) = [bos, ..., eos], plus the raw text."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], pairs: list[TextPair], bos: int, eos: int) -> None:
        self.src, self.tgt, self.pairs, self.bos, self.eos = src, tgt, pairs, bos, eos

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict:
        return {"src": self.src[i], "tgt": [self.bos, *self.tgt[i], self.eos], "source": self.pairs[i].source,
                "target": self.pairs[i].target}


class LineDataset(Dataset):
    """Input lines for predict: items are dicts with `src` token ids (empty for an empty line) and the text."""

    def __init__(self, src: list[list[int]], lines: list[str]) -> None:
        self.src, self.lines = src, lines

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict:
        return {"src": self.src[i], "source": self.lines[i], "line": i + 1}


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Right-pad id lists to (B, max length) with `pad_id` (at least one column)."""
    out = torch.full((len(seqs), max(1, max(len(s) for s in seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


class TextCollate:
    """Batch of dicts -> dict: id lists become padded (B, N) tensors; text fields stay lists."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            batch[key] = pad_batch(values, self.pad_id) if key in ("src", "tgt") else values
        return batch


# ------------------------------------------------------------------------------------------ data module
Stage = Literal["fit", "validate", "test", "predict"]


class Seq2SeqDataModule(VitkitDataModule):
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

    @property
    def file_tokenizer(self) -> TextTokenizer | None:
        if self.hparams.tokenizer is not None and self._file_tokenizer is None:
            self._file_tokenizer = TextTokenizer.from_file(self.hparams.tokenizer)
        return self._file_tokenizer

    @property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer in use: restored from a checkpoint, loaded from `tokenizer`, or trained on the
        training text (first use only)."""
        if self._tokenizer is None:
            self._tokenizer = self.file_tokenizer or self._train_tokenizer()
        return self._tokenizer

    def _train_tokenizer(self) -> TextTokenizer:
        pairs = self._split_pairs("train")
        texts = (t for p in pairs for t in (p.source, p.target))
        tok = TextTokenizer.train(texts, self.hparams.vocab_size)
        log.info("trained a byte-level BPE of %d tokens on %d training pairs", tok.vocab_size, len(pairs))
        return tok

    # -- checkpoint: the tokenizer travels with it --
    def state_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.state()} if self._tokenizer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "tokenizer" in state:
            self._tokenizer = adopt_tokenizer(state["tokenizer"], self.file_tokenizer, self.hparams.tokenizer)
            self.forget_datasets()  # re-encode with the checkpoint's tokenizer

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


# -- what the model needs to know, computed from the data config (the CLI links these at parse time) --
@functools.lru_cache(maxsize=8)
def _tokenizer_file(path: str) -> TextTokenizer:
    return TextTokenizer.from_file(path)


def linked_vocab_size(tokenizer: str | None, vocab_size: int) -> int:
    """Rows of the model's embedding: a given tokenizer file's size, else the size of the BPE to train."""
    return _tokenizer_file(tokenizer).vocab_size if tokenizer else vocab_size


def linked_special_id(which: Literal["pad", "bos", "eos"], tokenizer: str | None) -> int:
    """A special token's id in a given tokenizer file, else in the BPE trained here (SPECIALS order)."""
    if not tokenizer:
        return SPECIALS.index(f"<{which}>")
    return getattr(_tokenizer_file(tokenizer), f"{which}_id")


def adopt_tokenizer(state: dict, given: TextTokenizer | None, given_path: str | None) -> TextTokenizer:
    """The checkpoint's tokenizer; a tokenizer file given in the config must be the same one."""
    saved = TextTokenizer.from_state(state)
    if given is not None and given.fingerprint != saved.fingerprint:
        raise CheckpointError(
            f"data.tokenizer {given_path} ({given.vocab_size} tokens, fingerprint {given.fingerprint}) does not match "
            f"the checkpoint's tokenizer ({saved.vocab_size} tokens, fingerprint {saved.fingerprint}); the model's "
            f"token ids would mean other words. Leave data.tokenizer unset to use the checkpoint's own"
        )
    return saved


