"""vitkit's command line: LightningCLI with vitkit's defaults
(`python train.py fit|validate|test|predict --config ...`).

Defaults added here, each overridable from YAML: a Rich progress bar, CSV + TensorBoard loggers sharing
one run folder (`runs/<config name>/version_N`), a ModelCheckpoint keeping the best and the last
checkpoint (monitor taken from the task), the learning-rate monitor, and `--ckpt_path last` resolving
to the newest run's `last.ckpt` (resuming in that run's folder) instead of silently starting afresh.
The fault-tolerance callbacks of `vitkit.faults` (pre-emption, non-finite loss, exact resume, checkpoint
stamp) are added too, and `--ckpt_path` is read weights-only and checked against the config's task first.
"""
from __future__ import annotations

import csv
import functools
import importlib
import logging
import re
import sys
from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from .callbacks import PredictionGallery, TrainingCurves
from .data.text import linked_special_id, linked_vocab_size
from .errors import VitkitError
from .faults import CheckpointStamp, NonFiniteLoss, Preemption, ResumeState, load_checkpoint, task_name


class VitkitTrainer(Trainer):
    """Lightning's Trainer whose `log_dir` is agreed once per stage by all processes (SharedLogDir) and then
    answered locally, so that code writing reports on rank zero only may ask for it without stalling DDP."""

    @property
    def log_dir(self) -> str | None:
        return self.__dict__["_shared_log_dir"] if "_shared_log_dir" in self.__dict__ else super().log_dir


class SharedLogDir(Callback):
    """Every process asks Lightning for the run folder (a broadcast under DDP) at setup; VitkitTrainer keeps it."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        trainer.__dict__.pop("_shared_log_dir", None)
        trainer.__dict__["_shared_log_dir"] = Trainer.log_dir.fget(trainer)


class VitkitCLI(LightningCLI):
    """LightningCLI in subclass mode: a config names the task (`model.class_path`) and data module."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("trainer_class", VitkitTrainer)
        kwargs.setdefault("trainer_defaults", {"default_root_dir": "runs"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        self._resume_version: tuple[str, int] | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="run folder name under trainer.default_root_dir (default: the config file's name)")
        parser.add_argument("--test_after_fit", type=bool, default=False, help="after fit, test the best checkpoint")
        parser.link_arguments("data.init_args.img_size", "model.init_args.img_size")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        # text path: the tokenizer's vocabulary and special ids, and the longest sequence, fix the model's shapes
        # (parse time: an instantiate-time link missing on another data module makes jsonargparse str() it)
        parser.link_arguments("data.init_args.max_len", "model.init_args.max_len")
        parser.link_arguments(("data.init_args.tokenizer", "data.init_args.vocab_size"), "model.init_args.vocab_size",
                              compute_fn=linked_vocab_size)
        for which in ("pad", "bos", "eos"):
            parser.link_arguments("data.init_args.tokenizer", f"model.init_args.{which}_id",
                                  compute_fn=functools.partial(linked_special_id, which))

    # -- `--ckpt_path last`: find the newest run's last.ckpt and continue in its folder --
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path") == "last":
            ckpt, version = find_last_checkpoint(self._root_dir(), self._run_name())
            self.config[sub]["ckpt_path"] = str(ckpt)
            self._resume_version = version
        if sub:
            self._check_checkpoint(self.config[sub])

    def _check_checkpoint(self, cfg) -> None:
        """Read `ckpt_path` weights-only (as LightningCLI re-reads its hyper-parameters) and refuse a damaged
        checkpoint, or one of another task or vitkit format, with one clear message before Lightning loads it."""
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg["weights_only"] = True  # explicit, whatever torch's default
        path = cfg.get("ckpt_path")
        if not path or path in ("best", "last", "hpc", "registry"):
            return
        class_path = (cfg.get("model") or {}).get("class_path")
        load_checkpoint(path, task=task_name(_import(class_path)) if class_path else None)

    def _section(self):
        sub = self.config.get("subcommand")
        return self.config[sub] if sub else self.config

    def _root_dir(self) -> Path:
        return Path(self._section().get("trainer", {}).get("default_root_dir") or "runs")

    def _run_name(self) -> str:
        cfg = self._section()
        if cfg.get("run_name"):
            return cfg["run_name"]
        configs = cfg.get("config") or []
        return Path(str(configs[-1])).stem if configs else "vitkit"

    # -- loggers and checkpointing --
    def instantiate_trainer(self, **kwargs) -> Trainer:
        cfg = self._get(self.config_init, "trainer", default={})
        if cfg.get("logger") in (None, True):
            kwargs["logger"] = self._loggers()
        kwargs["callbacks"] = list(cfg.get("callbacks") or []) + self._default_callbacks(cfg)
        return super().instantiate_trainer(**kwargs)

    def _default_callbacks(self, cfg) -> list:
        """A Rich progress bar, a learning-rate monitor, a best + last ModelCheckpoint on the task's
        monitor, training curves and a test gallery as PNG, each unless configured otherwise."""
        have = list(cfg.get("callbacks") or []) + list(self.trainer_defaults.get("callbacks", []))
        extra = []
        if cfg.get("logger") is not False and not any(isinstance(c, LearningRateMonitor) for c in have):
            extra.append(LearningRateMonitor("step"))
        if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in have):
            extra.append(RichProgressBar())
        if cfg.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in have):
            monitor, mode = getattr(self.model, "monitor", None), getattr(self.model, "monitor_mode", "min")
            # no version counter: save_last rewrites last.ckpt (also written below and on pre-emption),
            # never last-v1.ckpt
            extra.append(ModelCheckpoint(monitor=monitor, mode=mode, save_last=True, filename="best-{epoch:03d}-{step}",
                                         enable_version_counter=False))
            # last.ckpt after every epoch too: Lightning's save_last rewrites it only when the monitor improved
            extra.append(ModelCheckpoint(filename="last", enable_version_counter=False))
        for report in (TrainingCurves, PredictionGallery):  # PNG reports in the run folder
            if not any(isinstance(c, report) for c in have):
                extra.append(report())
        for fault in (Preemption, NonFiniteLoss, ResumeState, CheckpointStamp):  # vitkit.faults
            if not any(isinstance(c, fault) for c in have):
                extra.append(fault())
        return extra + [SharedLogDir()]

    def _loggers(self) -> list:
        root, name = self._root_dir(), self._run_name()
        if self._resume_version:
            version, csv_logger = self._resume_version[1], ResumedCSVLogger
        else:
            version, csv_logger = _next_version(root / name), CSVLogger
        return [csv_logger(root, name=name, version=version),
                TensorBoardLogger(root, name=name, version=version, default_hp_metric=False)]

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit"):
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on resume, keep its rows and append."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ResumedCSVLogger(CSVLogger):
    """CSVLogger that continues a run's metrics.csv instead of replacing it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _next_version(folder: Path) -> int:
    versions = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions, default=-1) + 1


def find_last_checkpoint(root: Path, name: str) -> tuple[Path, tuple[str, int]]:
    """The newest `<root>/<name>/version_N/checkpoints/last.ckpt`, and (name, N) to continue that run."""
    found = sorted(
        (int(m.group(1)), p)
        for p in (root / name).glob("version_*/checkpoints/last*.ckpt")
        if (m := re.fullmatch(r"version_(\d+)", p.parent.parent.name))
    )
    if not found:
        raise VitkitError(
            f"--ckpt_path last: no last.ckpt under {root / name}/version_*/checkpoints/; "
            f"expected a previous `fit` of run '{name}' (set --run_name or trainer.default_root_dir to point at it)"
        )
    version, path = max(found, key=lambda vp: (vp[0], vp[1].stat().st_mtime))
    return path, (name, version)


def user_message(err: BaseException) -> str:
    """The message of a vitkit error, without the worker traceback a DataLoader process wraps around it."""
    msg = str(err)
    if "Original Traceback" in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return msg


def find_vitkit_error(err: BaseException | None) -> VitkitError | None:
    """The VitkitError behind `err`, following the causes that jsonargparse and Lightning wrap around it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VitkitError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def show_vitkit_log(level: int = logging.INFO) -> None:
    """Print vitkit's own log lines (the pipeline a folder got, what was cached, skipped or written) on stderr,
    as Lightning prints its own; a handler the user configured is left alone."""
    logger = logging.getLogger("vitkit")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("vitkit: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)


def main(args: list[str] | None = None) -> None:
    """Entry point of `train.py` and the `vitkit` script; vitkit's errors end in one message and exit 2.
    `explain ...` goes to `vitkit.explain.command`, `check-data ...` to `vitkit.checkdata`, `export ...` to
    `vitkit.export.command` and `serve ...` to `vitkit.serve.command` (argparse); everything else is LightningCLI."""
    argv = sys.argv[1:] if args is None else list(args)
    show_vitkit_log()
    try:
        if argv[:1] == ["explain"]:
            from .explain.command import main as explain

            return explain(argv[1:])
        if argv[:1] == ["check-data"]:
            from .checkdata import main as check_data

            return check_data(argv[1:])
        if argv[:1] == ["export"]:
            from .export.command import main as export

            return export(argv[1:])
        if argv[:1] == ["serve"]:
            from .serve.command import main as serve

            return serve(argv[1:])
        VitkitCLI(args=args)
    except Exception as err:  # noqa: BLE001 - re-raised unless it is (or wraps) one of vitkit's own errors
        found = find_vitkit_error(err)
        if found is None:
            raise
        print(f"error: {user_message(found)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
