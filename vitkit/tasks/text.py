"""Text-path tasks: `Seq2Seq` (translation, summarisation; Vaswani et al. 2017) scored with sacreBLEU, exact match
and ROUGE-L; `ImageCaptioner` (a ViT encoder and a text decoder, as in Show-Attend-Tell with a transformer
decoder) scored with COCO's BLEU-4 and CIDEr (Vedantam et al. 2015); `VisualQA` (answer classification over
fused image and question tokens, as in ViLT, Kim et al. 2021) scored with VQA accuracy (Antol et al. 2015).

Each task keeps the tokenizer it was trained with inside its checkpoint, so `predict` needs nothing else; a
tokenizer given in the config that differs from the checkpoint's is an error.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from ..data.text import TextTokenizer, adopt_tokenizer
from ..errors import CheckpointError, ConfigError
from ..models import create_model
from .base import VitkitTask
from .optim import build_adamw, warmup_cosine_scheduler

log = logging.getLogger("vitkit")

Seq2SeqMetric = Literal["bleu", "exact_match", "rougeL", "loss"]
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


def configure_adamw_cosine(module: pl.LightningModule, model: torch.nn.Module):
    """AdamW (no decay on norms/biases/positions) with linear warm-up over `warmup_steps` and a cosine."""
    hp = module.hparams
    optimizer = build_adamw(model, hp.lr, hp.weight_decay, hp.betas)
    total = int(module.trainer.estimated_stepping_batches)
    scheduler = warmup_cosine_scheduler(optimizer, min(total, max(1, hp.warmup_steps)), total, hp.min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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


# ------------------------------------------------------------------------------------------ Seq2Seq
class Seq2Seq(TokenizerMixin, VitkitTask):
    """Translation / summarisation with a registered encoder-decoder (`vitkit.list_models(family="text")`).

    Trained with label-smoothed cross-entropy on teacher-forced targets (padding ignored); validated and
    tested by decoding (greedy, or beam search with `beam_size > 1`) and scoring the detokenised outputs
    against the reference text: sacreBLEU (0-100, `bleu`), exact match (0-1, `exact_match`) and, with
    `rouge: true`, ROUGE-L F1 (0-1, `rougeL`).

    Args:
        model: registered text model, e.g. ``transformer_tiny``, ``transformer_base``.
        vocab_size: vocabulary size (linked from the data module).
        max_len: most positions of a source or target (linked from the data module).
        pad_id: padding id (linked from the data module's tokenizer).
        bos_id: start-of-sequence id (linked).
        eos_id: end-of-sequence id (linked).
        model_kwargs: further keyword arguments for the model (dim, enc_depth, dropout, pos_embed, ...).
        lr: peak learning rate after warm-up.
        weight_decay: AdamW weight decay (not on norms, biases or learned positions).
        betas: AdamW betas (Vaswani et al. use 0.9, 0.98).
        warmup_steps: linear warm-up length in optimiser steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` at the end of the cosine.
        label_smoothing: cross-entropy label smoothing (0.1 in the paper).
        beam_size: 1 decodes greedily; more runs beam search (validation, test and predict).
        length_penalty: GNMT length-penalty exponent of beam search (0: raw log-probability).
        max_new_tokens: most tokens generated per input; None: up to ``max_len - 1``.
        rouge: also report ROUGE-L (for summarisation).
        monitor_metric: the validation metric that picks the best checkpoint.
        compile: ``torch.compile`` the model in place for training (checkpoints load either way).
        predict_output: besides ``<run>/predictions.txt``, also write the outputs here ("-": standard output).

    The decoding settings (``beam_size``, ``length_penalty``, ``max_new_tokens``, ``predict_output``) are not
    saved as hyper-parameters, so ``test``/``predict --ckpt_path`` use the values given then.
    """

    runtime_hparams = DECODING

    def __init__(
        self,
        model: str = "transformer_tiny",
        vocab_size: int = 1000,
        max_len: int = 128,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        model_kwargs: dict[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 500,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        beam_size: int = 1,
        length_penalty: float = 0.6,
        max_new_tokens: int | None = None,
        rouge: bool = False,
        monitor_metric: Seq2SeqMetric = "bleu",
        compile: bool = False,
        compile_backend: str = "inductor",
        predict_output: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.runtime_hparams))  # test/predict take them from the command line
        self.decoding = dict(beam_size=beam_size, length_penalty=length_penalty, max_new_tokens=max_new_tokens)
        self.predict_output = predict_output
        if monitor_metric == "rougeL" and not rouge:
            raise ConfigError("model.monitor_metric: 'rougeL' needs model.rouge: true")
        if beam_size < 1:
            raise ConfigError(f"model.beam_size: found {beam_size}; expected 1 (greedy) or more")
        ids = dict(vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        self.model = build_text_model(model, ids, model_kwargs)
        self.maybe_compile(compile, compile_backend, self.model)
        self.monitor, self.monitor_mode = f"val/{monitor_metric}", "min" if monitor_metric == "loss" else "max"
        self.val_metrics, self.test_metrics = self._metrics(), self._metrics()
        self._outputs: list[dict] = []

    def _metrics(self) -> torch.nn.ModuleDict:
        metrics = {"bleu": SacreBLEUScore(), "exact_match": MeanMetric()}
        if self.hparams.rouge:
            metrics["rougeL"] = ROUGEScore(rouge_keys="rougeL")
        return torch.nn.ModuleDict(metrics)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.model(src, tgt_in)

    def loss(self, batch: dict) -> torch.Tensor:
        tgt = batch["tgt"]  # (B, T) = [bos, y..., eos, pad...]
        logits = self(batch["src"], tgt[:, :-1])  # (B, T-1, V): predict each next token
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt[:, 1:].flatten(), ignore_index=self.hparams.pad_id,
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["src"]))
        return loss

    # -- decoding --
    @torch.no_grad()
    def generate_ids(self, src: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
        d = self.decoding
        return self.model.generate(src, d["max_new_tokens"] or self.hparams.max_len - 1, d["beam_size"],
                                   d["length_penalty"], use_cache=use_cache)

    def translate(self, texts: list[str]) -> list[str]:
        """Decode raw strings with the model's own tokenizer (for use outside the CLI). Inputs longer than
        `max_len` tokens are truncated (counted in a warning); an empty input gives an empty output."""
        tok, max_len = self._attach_tokenizer(), self.hparams.max_len
        ids = [tok.encode(t) for t in texts]
        cut = sum(len(s) > max_len for s in ids)
        if cut:
            log.warning("translate: %d of %d inputs longer than max_len=%d tokens were truncated", cut, len(ids),
                        max_len)
        ids = [s[:max_len] for s in ids]
        outputs = [""] * len(ids)  # an empty input gets an empty output, as in `predict`
        rows = [i for i, s in enumerate(ids) if s]
        if rows:
            src = torch.full((len(rows), max(len(ids[i]) for i in rows)), tok.pad_id, dtype=torch.long,
                             device=self.device)
            for r, i in enumerate(rows):
                src[r, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            for i, row in zip(rows, self.generate_ids(src).tolist()):
                outputs[i] = tok.decode(row)
        return outputs

    # -- evaluation --
    def _evaluate(self, batch: dict, stage: str, metrics: torch.nn.ModuleDict) -> list[str]:
        B = len(batch["src"])
        self.log(f"{stage}/loss", self.loss(batch), prog_bar=stage == "val", batch_size=B, sync_dist=True)
        hyps = [self.tokenizer.decode(row) for row in self.generate_ids(batch["src"]).tolist()]
        refs = batch["target"]
        metrics["bleu"].update(hyps, [[r] for r in refs])
        metrics["exact_match"].update(torch.tensor([float(h == r) for h, r in zip(hyps, refs)], device=self.device))
        if "rougeL" in metrics:
            metrics["rougeL"].update(hyps, refs)
        return hyps

    def _log_metrics(self, stage: str, metrics: torch.nn.ModuleDict) -> None:
        values = {f"{stage}/bleu": metrics["bleu"].compute() * 100,
                  f"{stage}/exact_match": metrics["exact_match"].compute()}
        if "rougeL" in metrics:
            values[f"{stage}/rougeL"] = metrics["rougeL"].compute()["rougeL_fmeasure"]
        self.log_dict(values, prog_bar=stage == "val")
        for m in metrics.values():
            m.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        hyps = self._evaluate(batch, "test", self.test_metrics)
        self._outputs += [{"source": s, "reference": r, "output": h}
                          for s, r, h in zip(batch["source"], batch["target"], hyps)]

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)
        self._write_test_outputs()

    @rank_zero_only
    def _write_test_outputs(self) -> None:
        path = self.run_dir() / "test_outputs.tsv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
            w.writerow(["source", "reference", "output", "exact"])
            w.writerows([o["source"], o["reference"], o["output"], int(o["output"] == o["reference"])]
                        for o in self._outputs)
        log.info("test outputs written to %s", path)

    # -- prediction --
    def on_predict_epoch_start(self) -> None:
        self._outputs = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        src = batch["src"]
        has_text = (src != self.hparams.pad_id).any(dim=1)  # empty input lines get empty outputs
        outputs = [""] * len(src)
        if bool(has_text.any()):
            rows = self.generate_ids(src[has_text]).tolist()
            for i, row in zip(has_text.nonzero().flatten().tolist(), rows):
                outputs[i] = self.tokenizer.decode(row)
        rows = [{"line": n, "source": s, "output": o} for n, s, o in zip(batch["line"], batch["source"], outputs)]
        self._outputs += rows
        return rows

    def on_predict_epoch_end(self) -> None:
        rows = sorted(self._outputs, key=lambda r: r["line"])
        write_lines([r["output"] for r in rows], str(self.output_path("predictions.txt")), "outputs")
        self.output_path("predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self.predict_output:
            write_lines([r["output"] for r in rows], self.predict_output, "outputs")

    def configure_optimizers(self):
        return configure_adamw_cosine(self, self.model)


# ------------------------------------------------------------------------------------------ captioning
def caption_words(text: str) -> str:
    """Lower case, punctuation dropped, words joined by single spaces: the tokenisation COCO's caption
    scorers expect (an approximation of its PTB tokenizer, which needs Java)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def caption_scores(hyps: dict, refs: dict) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D with pycocoevalcap (the COCO caption evaluation code), on 0..1 / 0..10."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if not hyps:
        return {"bleu4": 0.0, "cider": 0.0}
    gts = {k: [caption_words(r) for r in refs[k]] for k in hyps}
    res = {k: [caption_words(hyps[k]) or "<empty>"] for k in hyps}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def gather_rows(module: pl.LightningModule, rows: list) -> list:
    """Every rank's rows (pure-python metrics like CIDEr need the whole split)."""
    if module.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * module.trainer.world_size
        torch.distributed.all_gather_object(parts, rows)
        return [r for part in parts for r in part]
    return rows


def save_caption_sheet(images: list[torch.Tensor], captions: list[str], path: Path, mean=None, std=None,
                       title: str = "", cols: int = 4) -> Path:
    """A PNG grid of images, each with its caption underneath."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..callbacks import to_display

    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(to_display(image, mean, std), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(caption, 30)) or "(empty)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _normalisation(module: pl.LightningModule):
    hp = getattr(getattr(module.trainer, "datamodule", None), "hparams", {}) or {}
    return hp.get("mean"), hp.get("std")


CaptionMetric = Literal["cider", "bleu4", "loss"]


class ImageCaptioner(TokenizerMixin, VitkitTask):
    """Image captioning: any registered vitkit image encoder and a causal text decoder (`CaptionTransformer`).

    Trained with label-smoothed cross-entropy on every reference caption; validated and tested by decoding
    one caption per image and scoring it against all references with COCO's BLEU-4 (0..1, ``bleu4``) and
    CIDEr-D (``cider``). Test writes ``test_captions.json`` (COCO results format) and ``test_captions.png``;
    predict writes ``predictions.json``/``.csv`` and ``captions.png`` (the images with their captions).

    Args:
        encoder: registered image encoder, e.g. ``vit_nano_patch4_32``.
        encoder_kwargs: its keyword arguments (depth, patch_size, embed_dim, ...).
        pretrained: checkpoint file for the encoder (timm/torchvision/transformers/vitkit), or None.
        img_size: image side (linked from the data module).
        vocab_size: vocabulary size (linked from the data module).
        max_len: most caption tokens with BOS/EOS (linked).
        pad_id: padding id (linked). bos_id: start id (linked). eos_id: end id (linked).
        decoder_kwargs: ``CaptionTransformer`` decoder settings (dim, depth, num_heads, dropout, pos_embed).
        lr: peak learning rate. weight_decay: AdamW weight decay. betas: AdamW betas.
        warmup_steps: linear warm-up steps. min_lr_ratio: final lr fraction of the cosine.
        label_smoothing: cross-entropy label smoothing.
        beam_size: 1 decodes greedily; more runs beam search. length_penalty: GNMT exponent.
        max_new_tokens: most generated tokens (None: max_len - 1).
        monitor_metric: validation metric that picks the best checkpoint.
        compile: ``torch.compile`` the model in place for training.
        sheet_images: how many images the PNG sheets show.
    """

    runtime_hparams = (*DECODING, "sheet_images")

    def __init__(
        self,
        encoder: str = "vit_nano_patch4_32",
        encoder_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        img_size: int | None = None,
        vocab_size: int = 1000,
        max_len: int = 32,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        decoder_kwargs: dict[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 500,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        beam_size: int = 1,
        length_penalty: float = 0.6,
        max_new_tokens: int | None = None,
        monitor_metric: CaptionMetric = "cider",
        compile: bool = False,
        compile_backend: str = "inductor",
        sheet_images: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.runtime_hparams))
        self.decoding = dict(beam_size=beam_size, length_penalty=length_penalty, max_new_tokens=max_new_tokens)
        self.sheet_images = sheet_images
        from ..models.captioner import CaptionTransformer

        kwargs = dict(vocab_size=vocab_size, encoder=encoder, img_size=img_size, encoder_kwargs=encoder_kwargs,
                      pretrained=pretrained, max_len=max_len, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
                      **(decoder_kwargs or {}))
        self.model = self.build_model(CaptionTransformer, "the captioner", **kwargs)
        self.maybe_compile(compile, compile_backend, self.model)
        self.monitor, self.monitor_mode = f"val/{monitor_metric}", "min" if monitor_metric == "loss" else "max"
        self._rows: list[dict] = []
        self._sheet: list[tuple[torch.Tensor, str]] = []

    def forward(self, images: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.model(images, tgt_in)

    def loss(self, batch: dict) -> torch.Tensor:
        tgt = batch["tgt"]
        logits = self(batch["images"], tgt[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt[:, 1:].flatten(), ignore_index=self.hparams.pad_id,
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        return loss

    def caption(self, images: torch.Tensor) -> list[str]:
        d = self.decoding
        ids = self.model.generate(images, d["max_new_tokens"] or self.hparams.max_len - 1, d["beam_size"],
                                  d["length_penalty"])
        return [self.tokenizer.decode(row) for row in ids.tolist()]

    # -- evaluation --
    def _evaluate(self, batch: dict, stage: str) -> list[str]:
        self.log(f"{stage}/loss", self.loss(batch), prog_bar=stage == "val", batch_size=len(batch["images"]),
                 sync_dist=True)
        hyps = self.caption(batch["images"])
        self._rows += [{"image_id": i, "caption": h, "refs": r}
                       for i, h, r in zip(batch["image_id"], hyps, batch["refs"])]
        return hyps

    def _log_scores(self, stage: str) -> dict[str, float]:
        rows = gather_rows(self, self._rows)
        scores = caption_scores({r["image_id"]: r["caption"] for r in rows}, {r["image_id"]: r["refs"] for r in rows})
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=stage == "val", rank_zero_only=True)
        return scores

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_start(self) -> None:
        self._rows, self._sheet = [], []

    def test_step(self, batch: dict, batch_idx: int) -> list[str]:
        hyps = self._evaluate(batch, "test")
        self._keep_for_sheet(batch["images"], [f"{h}\n(ref: {r[0]})" for h, r in zip(hyps, batch["refs"])])
        return hyps

    def gallery_items(self, batch: dict, outputs: list[str]):
        """Best/worst test captions for the CLI's gallery, scored by sentence BLEU against the references."""
        import sacrebleu

        return [(sacrebleu.sentence_bleu(caption_words(h), [caption_words(r) for r in refs]).score / 100, img, h)
                for img, h, refs in zip(batch["images"], outputs, batch["refs"])]

    def _keep_for_sheet(self, images: torch.Tensor, captions: list[str]) -> None:
        for image, caption in zip(images, captions):
            if len(self._sheet) < self.sheet_images:
                self._sheet.append((image.detach().cpu(), caption))

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
        if self.global_rank == 0:
            self._write_outputs("test_captions",
                                [{"image_id": r["image_id"], "caption": r["caption"]} for r in self._rows])

    def _write_outputs(self, name: str, rows: list[dict]) -> None:
        """<run>/<name>.json and, with the kept images (on rank 0), the sheet <run>/test_captions.png or
        captions.png."""
        out = self.run_dir()
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
        if self._sheet and self.global_rank == 0:
            sheet = out / ("test_captions.png" if name == "test_captions" else "captions.png")
            mean, std = _normalisation(self)
            save_caption_sheet([i for i, _ in self._sheet], [c for _, c in self._sheet], sheet, mean, std,
                               f"{type(self).__name__}: {name.replace('_', ' ')}")
        log.info("%d captions written to %s", len(rows), out / f"{name}.json")

    # -- prediction --
    def on_predict_epoch_start(self) -> None:
        self._rows, self._sheet = [], []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        hyps = self.caption(batch["images"])
        rows = [{"path": str(p), "caption": h} for p, h in zip(batch["path"], hyps)]
        self._rows += rows
        self._keep_for_sheet(batch["images"], hyps)
        return rows

    def on_predict_epoch_end(self) -> None:
        self._write_outputs(self.output_path("predictions").name, self._rows)  # each process has its share
        with open(self.output_path("predictions.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "caption"])
            w.writerows([r["path"], r["caption"]] for r in self._rows)

    def explainers(self) -> dict:
        from ..explain.tasks import explain_captioning

        return {"cross": explain_captioning}

    def configure_optimizers(self):
        return configure_adamw_cosine(self, self.model)


# ------------------------------------------------------------------------------------------ VQA
def vqa_score(answer: str, references: list[str]) -> float:
    """VQA accuracy of one answer (Antol et al. 2015): min(1, #references that agree / 3); with a single
    reference, exact match."""
    if not references:
        return 0.0
    if len(references) == 1:
        return float(answer == references[0])
    return min(1.0, sum(answer == r for r in references) / 3.0)


ANSWER_TYPES = ("yes_no", "number", "other")
_NUMBER_WORDS = frozenset("zero one two three four five six seven eight nine ten eleven twelve".split())


def answer_type(references: list[str]) -> str:
    """The VQA answer type of a question from its references' majority answer (Antol et al. 2015 report
    accuracy per type): ``yes_no``, ``number`` (digits or a number word) or ``other``."""
    if not references:
        return "other"
    top = Counter(references).most_common(1)[0][0]
    if top in ("yes", "no"):
        return "yes_no"
    return "number" if top.isdigit() or top in _NUMBER_WORDS else "other"


class VisualQA(TokenizerMixin, VitkitTask):
    """Visual question answering as answer classification (`VQATransformer`): label-smoothed cross-entropy
    over the training answers; ``vqa_acc`` (0..1) in validation/test, and per answer type (``vqa_acc_yes_no``,
    ``vqa_acc_number``, ``vqa_acc_other``, as the VQA benchmark reports); predict writes ``predictions.json``/``.csv``.

    Args:
        encoder: registered image encoder. encoder_kwargs: its keyword arguments.
        pretrained: checkpoint file for the encoder, or None. img_size: image side (linked).
        vocab_size: question vocabulary (linked). max_len: most question tokens (linked).
        pad_id: padding id (linked). bos_id, eos_id: the tokenizer's other special ids (linked, checked).
        num_classes: number of answers (linked). class_names: the answers (linked).
        fusion_kwargs: ``VQATransformer`` settings (fusion: joint|cross, dim, depth, num_heads, dropout, pos_embed).
        lr: peak learning rate. weight_decay: AdamW weight decay. betas: AdamW betas.
        warmup_steps: linear warm-up steps. min_lr_ratio: final lr fraction of the cosine.
        label_smoothing: cross-entropy label smoothing.
        freeze_encoder: train only the question embedding, fusion and head (the encoder stays as loaded, in
            eval mode: no dropout, BatchNorm statistics unchanged).
        compile: ``torch.compile`` the model in place for training.
    """

    monitor, monitor_mode = "val/vqa_acc", "max"

    def __init__(
        self,
        encoder: str = "vit_nano_patch4_32",
        encoder_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        img_size: int | None = None,
        vocab_size: int = 1000,
        max_len: int = 24,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        freeze_encoder: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} answers; expected num_classes={num_classes}")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        from ..models.captioner import VQATransformer

        kwargs = dict(vocab_size=vocab_size, num_answers=num_classes, encoder=encoder, img_size=img_size,
                      encoder_kwargs=encoder_kwargs, pretrained=pretrained, max_len=max_len, pad_id=pad_id,
                      **(fusion_kwargs or {}))
        self.model = self.build_model(VQATransformer, "the VQA model", **kwargs)
        if freeze_encoder:  # keep a pretrained encoder's features; only the question side and the fusion learn
            self.model.encoder.requires_grad_(False)
        self.maybe_compile(compile, compile_backend, self.model)
        self.val_acc, self.test_acc = MeanMetric(), MeanMetric()
        self.type_acc = nn.ModuleDict({f"{stage}_{t}": MeanMetric() for stage in ("val", "test") for t in ANSWER_TYPES})
        self._rows: list[dict] = []

    def train(self, mode: bool = True) -> VisualQA:
        """A frozen encoder stays in eval mode while the rest trains: its dropout is off and its BatchNorm
        statistics (a convolutional stem's) stay as loaded."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.model.encoder.eval()
        return self

    def forward(self, images: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.model(images, question)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool((labels >= 0).any()):  # no answer of this batch is a known class
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels, ignore_index=-1, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch["images"], batch["question"]), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        return loss

    def _answer(self, logits: torch.Tensor) -> tuple[list[str], list[float]]:
        probs = logits.float().softmax(dim=-1)
        p, idx = probs.max(dim=-1)
        return [self.class_names[i] for i in idx.tolist()], p.tolist()

    def _evaluate(self, batch: dict, stage: str, metric: MeanMetric) -> list[str]:
        logits = self(batch["images"], batch["question"])
        self.log(f"{stage}/loss", self._loss(logits, batch["label"]), batch_size=len(logits), sync_dist=True)
        answers, _ = self._answer(logits)
        scores = torch.tensor([vqa_score(a, r) for a, r in zip(answers, batch["answers"])], device=self.device)
        metric.update(scores)
        self.log(f"{stage}/vqa_acc", metric, prog_bar=stage == "val")
        types = [answer_type(r) for r in batch["answers"]]
        for t in ANSWER_TYPES:  # every rank logs every type (weight 0 where absent): NaN if the split has none
            by_type = self.type_acc[f"{stage}_{t}"]
            by_type.update(scores, weight=torch.tensor([float(k == t) for k in types], device=self.device))
            self.log(f"{stage}/vqa_acc_{t}", by_type)
        return answers

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self._evaluate(batch, "test", self.test_acc)

    def gallery_items(self, batch: dict, outputs: list[str]):
        """Best/worst test answers for the CLI's gallery, scored by VQA accuracy."""
        return [(vqa_score(a, r), img, f"{q}\n{a} (true: {r[0] if r else '?'})")
                for img, q, a, r in zip(batch["images"], batch["question_text"], outputs, batch["answers"])]

    def on_predict_epoch_start(self) -> None:
        self._rows = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        answers, probs = self._answer(self(batch["images"], batch["question"]))
        rows = [{"image": str(p), "question": q, "answer": a, "prob": round(pr, 6)}
                for p, q, a, pr in zip(batch["path"], batch["question_text"], answers, probs)]
        self._rows += rows
        return rows

    def on_predict_epoch_end(self) -> None:
        csv_path = self.output_path("predictions.csv")
        self.output_path("predictions.json").write_text(json.dumps(self._rows, indent=1))
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "question", "answer", "prob"])
            w.writeheader()
            w.writerows(self._rows)
        log.info("%d answers written to %s", len(self._rows), csv_path)

    def configure_optimizers(self):
        return configure_adamw_cosine(self, self.model)
