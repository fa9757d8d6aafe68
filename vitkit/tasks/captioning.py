"""Image captioning task: a ViT encoder and a text decoder (Show-Attend-Tell with a transformer decoder), scored
with COCO's BLEU-4 and CIDEr-D (Vedantam et al. 2015); caption sheets and a best/worst gallery."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..viz import pyplot, save_figure, to_display
from .base import VitkitTask
from .text import DECODING, TokenizerMixin

log = logging.getLogger("vitkit")


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

    plt = pyplot()

    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(to_display(image, mean, std), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(caption, 30)) or "(empty)", fontsize=8)
    return save_figure(fig, path, title)


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

    batch_key = "images"
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
        if stage == "test":
            self._keep_for_sheet(batch["images"], [f"{h}\n(ref: {r[0]})" for h, r in zip(hyps, batch["refs"])])
        return hyps

    def _log_scores(self, stage: str) -> dict[str, float]:
        rows = gather_rows(self, self._rows)
        scores = caption_scores({r["image_id"]: r["caption"] for r in rows}, {r["image_id"]: r["refs"] for r in rows})
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=stage == "val", rank_zero_only=True)
        return scores

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_start(self) -> None:
        self._rows, self._sheet = [], []

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
        """<run>/<name>.json and the sheet of kept images."""
        path = self.run_dir() / f"{name}.json"
        path.write_text(json.dumps(rows, indent=1))
        log.info("%d captions written to %s", len(rows), path)
        self._save_sheet(name)

    def _save_sheet(self, name: str) -> None:
        """With kept images (on rank 0), the sheet <run>/test_captions.png (test) or captions.png (predict)."""
        if self._sheet and self.global_rank == 0:
            sheet = self.run_dir() / ("test_captions.png" if name == "test_captions" else "captions.png")
            mean, std = _normalisation(self)
            save_caption_sheet([i for i, _ in self._sheet], [c for _, c in self._sheet], sheet, mean, std,
                               f"{type(self).__name__}: {name.replace('_', ' ')}")

    # -- prediction --
    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self._sheet = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        hyps = self.caption(batch["images"])
        self._keep_for_sheet(batch["images"], hyps)
        return [{"path": str(p), "caption": h} for p, h in zip(batch["path"], hyps)]

    def write_predictions(self, rows: list[dict]) -> Path:
        path = super().write_predictions(rows)  # predictions.json and .csv (path, caption)
        self._save_sheet("predictions")
        return path

    def explainers(self) -> dict:
        from ..explain.tasks import explain_captioning

        return {"cross": explain_captioning}
