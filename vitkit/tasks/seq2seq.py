"""Sequence-to-sequence task (translation, summarisation; Vaswani et al. 2017): teacher-forced label-smoothed
cross-entropy, greedy or beam decoding with a KV cache, scored with sacreBLEU, exact match and ROUGE-L."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from torchmetrics import MeanMetric
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from ..errors import ConfigError
from .base import VitkitTask
from .text import DECODING, TokenizerMixin, build_text_model, write_lines

log = logging.getLogger("vitkit")


Seq2SeqMetric = Literal["bleu", "exact_match", "rougeL", "loss"]


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

    batch_key = "src"
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
    def _evaluate(self, batch: dict, stage: str) -> list[str]:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        B = len(batch["src"])
        self.log(f"{stage}/loss", self.loss(batch), prog_bar=stage == "val", batch_size=B, sync_dist=True)
        hyps = [self.tokenizer.decode(row) for row in self.generate_ids(batch["src"]).tolist()]
        refs = batch["target"]
        metrics["bleu"].update(hyps, [[r] for r in refs])
        metrics["exact_match"].update(torch.tensor([float(h == r) for h, r in zip(hyps, refs)], device=self.device))
        if "rougeL" in metrics:
            metrics["rougeL"].update(hyps, refs)
        if stage == "test":
            self._outputs += [{"source": s, "reference": r, "output": h}
                              for s, r, h in zip(batch["source"], refs, hyps)]
        return hyps

    def _log_metrics(self, stage: str, metrics: torch.nn.ModuleDict) -> None:
        values = {f"{stage}/bleu": metrics["bleu"].compute() * 100,
                  f"{stage}/exact_match": metrics["exact_match"].compute()}
        if "rougeL" in metrics:
            values[f"{stage}/rougeL"] = metrics["rougeL"].compute()["rougeL_fmeasure"]
        self.log_dict(values, prog_bar=stage == "val")
        for m in metrics.values():
            m.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self._outputs = []

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
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        src = batch["src"]
        has_text = (src != self.hparams.pad_id).any(dim=1)  # empty input lines get empty outputs
        outputs = [""] * len(src)
        if bool(has_text.any()):
            rows = self.generate_ids(src[has_text]).tolist()
            for i, row in zip(has_text.nonzero().flatten().tolist(), rows):
                outputs[i] = self.tokenizer.decode(row)
        return [{"line": n, "source": s, "output": o} for n, s, o in zip(batch["line"], batch["source"], outputs)]

    def write_predictions(self, rows: list[dict]) -> Path:
        """`predictions.txt` (one output per input line, in input order), `predictions.jsonl` (line, source,
        output) and, with `predict_output`, the outputs there too ("-": standard output)."""
        rows = sorted(rows, key=lambda r: r["line"])
        path = self.output_path("predictions.txt")
        write_lines([r["output"] for r in rows], str(path), "outputs")
        self.output_path("predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self.predict_output:
            write_lines([r["output"] for r in rows], self.predict_output, "outputs")
        return path
