"""What the text-path tasks share: the tokenizer kept in the checkpoint (`TokenizerMixin`), the runtime
decoding settings, building a text model, AdamW + warm-up + cosine, writing output lines. The tasks are
`seq2seq.Seq2Seq`, `captioning.ImageCaptioner` and `vqa.VisualQA`; their names stay importable from here.

Each task keeps the tokenizer it was trained with inside its checkpoint, so `predict` needs nothing else; a
tokenizer given in the config that differs from the checkpoint's is an error.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_only

from ..data.text import TextTokenizer, adopt_tokenizer
from ..errors import CheckpointError, ConfigError
from ..models import create_model
from .base import VitkitTask

log = logging.getLogger("vitkit")

# decoding settings stay out of a checkpoint's hyper-parameters: LightningCLI re-applies those over the
# command line for `test`/`predict --ckpt_path`, and how to decode is chosen at that time
DECODING = ("beam_size", "length_penalty", "max_new_tokens", "predict_output")  # runtime settings of both decoders


# ------------------------------------------------------------------------------------------ shared plumbing
class TokenizerMixin:
    """Keeps `self.tokenizer` in step with the data module and the checkpoint (used by every text task).

    Fit: the data module's tokenizer (trained or loaded) is taken, checked against the model and written
    to `<run>/tokenizer.json`. Any run from a checkpoint: the checkpoint's tokenizer wins."""

    tokenizer: TextTokenizer | None = None

    def _attach_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            dm = self.trainer.datamodule if self._trainer is not None else None
            tok = getattr(dm, "tokenizer", None)
            if tok is None:
                raise ConfigError(f"{type(self).__name__} needs a tokenizer: train with a vitkit text data module "
                                  f"(it trains or loads one), or load a checkpoint that holds one")
            self.tokenizer = tok
        check_tokenizer_fits(self.tokenizer, self.hparams)
        return self.tokenizer

    def on_fit_start(self) -> None:
        self._attach_tokenizer()
        self._save_tokenizer_file()

    def on_validation_start(self) -> None:
        self._attach_tokenizer()

    def on_test_start(self) -> None:
        self._attach_tokenizer()

    def on_predict_start(self) -> None:
        self._attach_tokenizer()

    @rank_zero_only
    def _save_tokenizer_file(self) -> None:
        path = self.tokenizer.save(self.run_dir() / "tokenizer.json")
        log.info("tokenizer (%d tokens) saved to %s", self.tokenizer.vocab_size, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the checkpoint's tokenizer; one given as a file in the data config must be that one (checked
        before the weights load, whose shapes such a tokenizer would have changed)."""
        if "tokenizer" not in checkpoint:
            return
        dm = self.trainer.datamodule if self._trainer is not None else None
        given = getattr(dm, "file_tokenizer", None)
        self.tokenizer = adopt_tokenizer(checkpoint["tokenizer"], given, getattr(dm, "hparams", {}).get("tokenizer"))


def check_tokenizer_fits(tok: TextTokenizer, hp) -> None:
    """The tokenizer's ids must exist in the model's vocabulary and its special ids be the model's."""
    if tok.vocab_size > hp.vocab_size:
        raise CheckpointError(
            f"tokenizer ({tok.origin}) has {tok.vocab_size} tokens; the model's vocabulary has {hp.vocab_size} "
            f"(model.init_args.vocab_size). Use the tokenizer the model was trained with, or a model of vocab_size "
            f">= {tok.vocab_size}"
        )
    theirs = {"pad_id": tok.pad_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id}
    ours = {k: hp[k] for k in theirs}
    if theirs != ours:
        raise CheckpointError(f"tokenizer ({tok.origin}) has special ids {theirs}; the model was built with {ours}. "
                              f"Use the tokenizer the model was trained with")


def build_text_model(name: str, family_kwargs: dict, model_kwargs: dict | None, field: str = "model.init_args"):
    kwargs = {**family_kwargs, **(model_kwargs or {})}
    return VitkitTask.build_model(create_model, repr(name), name, field=field, **kwargs)


def write_lines(lines: list[str], path: str, log_name: str) -> None:
    """Write outputs one per line to a file, or to standard output for "-"."""
    text = "".join(f"{line}\n" for line in lines)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        log.info("%d %s written to %s", len(lines), log_name, path)


_MOVED = {  # name -> module, for imports from before the text tasks had a file each
    "Seq2Seq": "seq2seq", "Seq2SeqMetric": "seq2seq",
    "ImageCaptioner": "captioning", "CaptionMetric": "captioning", "caption_words": "captioning",
    "caption_scores": "captioning", "gather_rows": "captioning", "save_caption_sheet": "captioning",
    "VisualQA": "vqa", "vqa_score": "vqa", "answer_type": "vqa", "ANSWER_TYPES": "vqa",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
