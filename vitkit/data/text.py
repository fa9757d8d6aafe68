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

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from ..errors import CheckpointError, ConfigError, DataError, DatasetNotFoundError
from .files import read_text

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
    """Batch of dicts -> dict: the `pad` id lists become (B, N) tensors padded with `pad_id`, `stack` tensors are
    stacked, `long` values become a (B,) tensor, other fields (text, paths) stay lists. The defaults are the
    seq2seq batch (`src`, `tgt`); `ImageTextCollate` sets those of captioning and VQA."""

    pad: tuple[str, ...] = ("src", "tgt")
    stack: tuple[str, ...] = ()
    long: tuple[str, ...] = ()

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key in self.pad:
                batch[key] = pad_batch(values, self.pad_id)
            elif key in self.stack:
                batch[key] = torch.stack(values)
            elif key in self.long:
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                batch[key] = values
        return batch


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




class TokenizerState:
    """Data-module mixin for the text data modules: the tokenizer in use (`tokenizer`: restored from a checkpoint,
    read from `data.tokenizer`, or trained on the training text by the module's `_train_tokenizer()`, on first
    use), kept in the checkpoint (`state_dict`); a checkpoint's tokenizer replaces the one trained or given here
    (`load_state_dict`, refusing a `data.tokenizer` file that differs), after which the splits are encoded again.
    Needs `_tokenizer` and `_file_tokenizer` (None at first) and `forget_datasets()`."""

    @property
    def file_tokenizer(self) -> TextTokenizer | None:
        if self.hparams.tokenizer is not None and self._file_tokenizer is None:
            self._file_tokenizer = TextTokenizer.from_file(self.hparams.tokenizer)
        return self._file_tokenizer

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = self.file_tokenizer or self._train_tokenizer()
        return self._tokenizer

    def _train_tokenizer(self) -> TextTokenizer:
        raise NotImplementedError(f"{type(self).__name__}._train_tokenizer")

    def state_dict(self) -> dict:
        return {"tokenizer": self._tokenizer.state()} if self._tokenizer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "tokenizer" in state:
            self._tokenizer = adopt_tokenizer(state["tokenizer"], self.file_tokenizer, self.hparams.tokenizer)
            self.forget_datasets()  # re-encode with the checkpoint's tokenizer


def __getattr__(name: str):
    if name in ("Seq2SeqDataModule", "Stage"):  # moved to `vitkit.data.seq2seq`; old imports still resolve
        from . import seq2seq

        return getattr(seq2seq, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
