"""Fault tolerance for every vitkit task, as Lightning callbacks: pre-emption (SIGTERM) saves a checkpoint and
exits cleanly, a non-finite loss stops the run (or skips the batch), a resumed run continues exactly where it
stopped (RNG states, shuffling, position inside the epoch), and checkpoints carry their task and vitkit version
and load weights-only. The CLI adds all four (`default_callbacks()`); each can be configured or replaced from YAML.
"""
from __future__ import annotations

import functools
import importlib
import itertools
import logging
import os
import pickle
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from .errors import CheckpointError, VitkitError

log = logging.getLogger("vitkit")

# Bump when checkpoints written by this vitkit can no longer be read by the previous one (or the reverse).
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(VitkitError, FloatingPointError):
    """The training loss became NaN or infinite."""


@rank_zero_only
def _say(message: str) -> None:
    log.warning(message)


def _any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (a collective: call it on all ranks at the same point)."""
    return trainer.strategy.reduce_boolean_decision(flag, all=False) if trainer.world_size > 1 else flag


def default_callbacks() -> list[Callback]:
    """The fault-tolerance callbacks the CLI adds: Preemption, NonFiniteLoss, ResumeState, CheckpointStamp."""
    return [Preemption(), NonFiniteLoss(), ResumeState(), CheckpointStamp()]


# ----------------------------------------------------------------------------------------------- pre-emption
class Preemption(Callback):
    """On SIGTERM (what SLURM, Kubernetes and cloud spot instances send before killing a job), save a checkpoint
    as `last.ckpt` in the run's checkpoint folder after the current training batch and exit with status 0.
    `python train.py fit ... --ckpt_path last` continues from it, mid-epoch included (see ResumeState).

    Lightning's own handler records the signal; here the ranks agree on it after each batch (one collective
    when there are several), so they all save the same step and leave together.
    """

    def __init__(self) -> None:
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if _any_rank(trainer, trainer.received_sigterm):
            self._save(trainer, f"after batch {batch_idx} of epoch {trainer.current_epoch}")
            raise SIGTERMException  # Lightning's clean exit: loggers finalised, status 0

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A SIGTERM that Lightning acted on outside a training batch (during validation): save there, on one
        process."""
        if (
            isinstance(exception, SIGTERMException)
            and self.saved_step != trainer.global_step
            and trainer.world_size == 1
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and trainer.global_step > 0
        ):
            self._save(trainer, f"during epoch {trainer.current_epoch}")

    def _save(self, trainer: pl.Trainer, where: str) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state
        self.saved_step = trainer.global_step
        _say(
            f"SIGTERM received: saved {path} at global step {trainer.global_step} ({where}) and stopping. "
            "Resume with the same command plus `--ckpt_path last`."
        )


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """`last.ckpt` in the folder of the run's ModelCheckpoint, else `<log_dir>/checkpoints/last.ckpt`."""
    name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / name
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / name


# ------------------------------------------------------------------------------------------ non-finite loss
class NonFiniteLoss(Callback):
    """Watch the training loss before each backward pass.

    Args:
        action: "stop" raises NonFiniteLossError naming the step, before that step changes any weight, so the
            checkpoints already written stay the last good ones. "skip" drops the optimiser update of that step
            (its gradients are cleared; the step and learning-rate schedule still advance, as with AMP's
            GradScaler), counts it in `skipped`, logs `train/skipped_batches` and reports the total at the end.
        max_skips: with "skip", stop as "stop" does once more than this many steps were skipped (None: never).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int | None = 10) -> None:
        if action not in ("stop", "skip"):
            raise VitkitError(f"NonFiniteLoss.action: found {action!r}; expected 'stop' or 'skip'")
        self.action, self.max_skips = action, max_skips
        self.skipped = 0
        self._drop_update = False
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach()
        if not _any_rank(trainer, not bool(torch.isfinite(value).all())):
            return
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        found = "nan" if torch.isnan(value).any() else "inf"
        over = self.max_skips is not None and self.skipped >= self.max_skips
        if self.action == "stop" or over:
            raise NonFiniteLossError(self._message(trainer, found, where, over))
        if not self._drop_update:
            _say(f"non-finite training loss ({found}) at {where}: skipping this update (NonFiniteLoss action=skip)")
        self._drop_update = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self._drop_update:
            return
        optimizer.zero_grad(set_to_none=True)  # parameters without gradients are left alone by the step
        self._drop_update = False
        self.skipped += 1
        pl_module.log("train/skipped_batches", float(self.skipped), reduce_fx="max")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skipped:
            _say(f"skipped {self.skipped} update(s) with a non-finite training loss (NonFiniteLoss action=skip)")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def _message(self, trainer: pl.Trainer, found: str, where: str, over: bool) -> str:
        callback = trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        why = f" after skipping {self.skipped} such update(s) (max_skips={self.max_skips})" if over else ""
        return (
            f"non-finite training loss ({found}) at {where}{why}; stopped before this step changed the weights, "
            f"and {kept}. Lower model.init_args.lr, set trainer.gradient_clip_val, or skip such batches with "
            "{class_path: vitkit.faults.NonFiniteLoss, init_args: {action: skip}} in trainer.callbacks, then resume "
            "with --ckpt_path last"
        )


# --------------------------------------------------------------------------------------------- exact resume
def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class _ResumableSampler:
    """Methods given to a training loader's sampler by ResumeState (through a subclass of its own class, made
    by `_resumable_class`): the order of an epoch depends only on (seed, epoch) — a RandomSampler draws
    `randperm(n)` from a generator seeded `seed + epoch`, exactly as DistributedSampler does — and the next
    epoch can start `vitkit_skip` samples in (a mid-epoch resume)."""

    vitkit_seed = 0
    vitkit_epoch = 0
    vitkit_skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.vitkit_epoch = epoch
        parent = getattr(super(type(self), self), "set_epoch", None)
        if parent is not None:
            parent(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.vitkit_skip = self.vitkit_skip, 0
        if isinstance(self, RandomSampler):
            self.generator = torch.Generator().manual_seed(self.vitkit_seed + self.vitkit_epoch)
        return itertools.islice(iter(super(type(self), self).__iter__()), skip, None)


@functools.cache
def _resumable_class(cls: type) -> type:
    """`cls` with the methods of _ResumableSampler and no new instance layout, so that an existing sampler
    can be switched to it (`sampler.__class__ = ...`) in place, inside the loader Lightning already holds."""
    methods = {k: v for k, v in vars(_ResumableSampler).items()
               if k.startswith("vitkit_") or k in ("set_epoch", "__iter__")}
    return type(f"Resumable{cls.__name__}", (cls,),
                {**methods, "__module__": __name__, "__slots__": (), "vitkit_resumable": True})


def _flatten_loaders(loaders: Any) -> list:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return [dl for v in loaders.values() for dl in _flatten_loaders(v)]
    if isinstance(loaders, (list, tuple)):
        return [dl for v in loaders for dl in _flatten_loaders(v)]
    return [loaders]


def _sampler_of(loader: Any):
    """The index sampler a map-style DataLoader batches from, or None where vitkit cannot position it."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.batch_sampler, BatchSampler):
        return None
    sampler = loader.batch_sampler.sampler
    return sampler if sampler is loader.sampler else None


def _augment_rng(loader: Any):
    """The albumentations (>= 2) pipeline of an in-process loader, whose random state lives in the pipeline."""
    if not isinstance(loader, DataLoader) or loader.num_workers > 0:
        return None
    transform = getattr(loader.dataset, "transform", None)
    return (transform if all(hasattr(transform, a) for a in ("random_generator", "py_random", "set_random_state"))
            else None)


def _rng_nodes(transform) -> Iterator[Any]:
    """The pipeline and every transform under it, parents before children."""
    yield transform
    for child in getattr(transform, "transforms", None) or []:
        yield from _rng_nodes(child)


def _augment_state(transform) -> dict[str, Any]:
    """Random state of every node of an albumentations pipeline; nodes sharing a generator keep sharing it."""
    gens, pys, nodes = [], [], []
    for node in _rng_nodes(transform):
        g, p = getattr(node, "random_generator", None), getattr(node, "py_random", None)
        nodes.append(None if g is None or p is None else (_position_of(gens, g), _position_of(pys, p)))
    return {"numpy": [g.bit_generator.state for g in gens], "python": [p.getstate() for p in pys], "nodes": nodes}


def _position_of(items: list, item: Any) -> int:
    for i, seen in enumerate(items):
        if seen is item:
            return i
    items.append(item)
    return len(items) - 1


def _set_augment_state(transform, state: dict[str, Any]) -> bool:
    nodes = list(_rng_nodes(transform))
    if len(nodes) != len(state["nodes"]):
        return False
    gens = []
    for saved in state["numpy"]:
        bits = getattr(np.random, saved["bit_generator"])()
        bits.state = saved
        gens.append(np.random.Generator(bits))
    pys = []
    for version, internal, gauss_next in state["python"]:
        pys.append(random.Random())
        pys[-1].setstate((version, tuple(internal), gauss_next))
    # parents first: a compose passes its state down, children then reset theirs
    for node, where in zip(nodes, state["nodes"]):
        if where is not None:
            node.set_random_state(gens[where[0]], pys[where[1]])
    return True


class ResumeState(Callback):
    """Makes a resumed `fit` continue as if it had never stopped, from an end-of-epoch or a mid-epoch checkpoint.

    Lightning restores weights, optimiser, LR schedule, loop counters and each task's own state (EMA). This adds:
    the torch/numpy/Python RNG states at the moment of the save; the random state of in-process augmentation
    pipelines (albumentations); shuffling that is a function of (seed, epoch) rather than of the global RNG; and,
    on a mid-epoch resume, a start at the first batch the interrupted run had not trained on. With
    `num_workers > 0` the order is exact but augmentation randomness lives in the worker processes and is not
    restored. The seed is `seed_everything`'s (the one DistributedSampler uses), so one process and N DDP ranks
    visit the same batches.
    """

    def __init__(self) -> None:
        self.seed: int | None = None
        self._trainer: pl.Trainer | None = None
        self._to_restore: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit" and self.seed is None:
            seed = os.environ.get("PL_GLOBAL_SEED")
            self.seed = int(seed) if seed is not None else int(torch.randint(2**31, ()))

    def state_dict(self) -> dict[str, Any]:
        loaders = self._loaders()
        return {"seed": self.seed, "rng": capture_rng(),
                "augment": [_augment_state(t) if (t := _augment_rng(dl)) is not None else None for dl in loaders]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)
        self._to_restore = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = self._loaders()
        changed = [self._position(dl, trainer.current_epoch) for dl in loaders]
        if any(changed) and all(_sampler_of(dl) is not None for dl in loaders):
            warnings.filterwarnings("ignore",
                                    message=r"You're resuming from a checkpoint that ended before the epoch ended")
        state, self._to_restore = self._to_restore, None
        if state is None:  # a fresh run: loaders with workers dispatched indices before the sampler was replaced
            if any(c and dl.num_workers > 0 for c, dl in zip(changed, loaders)):
                self._restart_iterator(trainer)
            return
        done = self._batches_done(trainer)
        for dl in loaders:
            if (sampler := _sampler_of(dl)) is not None:
                sampler.vitkit_skip = done * dl.batch_sampler.batch_size
        # The interrupted run drew no random number between its save and its next batch, except when that
        # batch opened a new epoch (its loader iterator draws a base seed): replay the same order of draws.
        if done:
            self._restart_iterator(trainer)
            restore_rng(state["rng"])
        else:
            restore_rng(state["rng"])
            self._restart_iterator(trainer)
        for dl, saved in zip(loaders, state.get("augment", [])):
            if (
                saved is not None
                and (transform := _augment_rng(dl)) is not None
                and not _set_augment_state(transform, saved)
            ):
                _say("resume: the training augmentation pipeline differs from the checkpoint's; "
                     "its random state starts afresh")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for dl in self._loaders():  # loaders reloaded by `reload_dataloaders_every_n_epochs`
            self._position(dl, trainer.current_epoch)

    def _loaders(self) -> list:
        trainer = self._trainer
        return _flatten_loaders(trainer.train_dataloader) if trainer is not None else []

    def _position(self, loader: Any, epoch: int) -> bool:
        """Give the loader's sampler the seeded order (once); True when it was replaced now."""
        sampler = _sampler_of(loader)
        if sampler is None or getattr(sampler, "vitkit_resumable", False):
            return False
        sampler.__class__ = _resumable_class(type(sampler))
        sampler.vitkit_seed, sampler.vitkit_epoch = self.seed or 0, epoch
        if hasattr(sampler, "epoch"):  # DistributedSampler: the epoch Lightning sets later in this same epoch
            sampler.epoch = epoch
        return True

    @staticmethod
    def _batches_done(trainer: pl.Trainer) -> int:
        """Training batches of the current epoch the checkpoint had finished (0 when it closed the epoch)."""
        fit_loop = trainer.fit_loop
        done = fit_loop.epoch_loop.batch_progress.current.processed
        if not fit_loop.restarted_mid_epoch or done >= trainer.num_training_batches:
            return 0
        return int(done)

    @staticmethod
    def _restart_iterator(trainer: pl.Trainer) -> None:
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)  # Lightning's own iterator over the train loaders
        if fetcher is not None:
            iter(fetcher)


# ----------------------------------------------------------------------------------- checkpoint safety
def task_name(task: type | pl.LightningModule) -> str:
    """The public `module.Class` of a task class or instance, as stamped into checkpoints: `vitkit.tasks.<Class>`
    for vitkit's own tasks (whichever file defines them), else the defining module."""
    from . import tasks

    cls = task if isinstance(task, type) else type(task)
    if getattr(tasks, cls.__name__, None) is cls:
        return f"vitkit.tasks.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def same_task(stamped: str | None, expected: str) -> bool:
    """Whether a checkpoint's stamped task is `expected`: the same name, or names of the same class (a stamp written
    before a task moved, e.g. `vitkit.tasks.detection.ObjectDetector`, still names `vitkit.tasks.ObjectDetector`)."""
    if stamped == expected:
        return True
    found = [_import_name(name) for name in (stamped, expected)]
    return found[0] is not None and found[0] is found[1]


def _import_name(name: str | None) -> Any:
    module, _, attr = (name or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr, None) if module else None
    except ImportError:
        return None


def checkpoint_stamp(pl_module: pl.LightningModule) -> dict[str, Any]:
    from . import __version__

    return {"version": __version__, "format": CHECKPOINT_FORMAT, "task": task_name(pl_module)}


class CheckpointStamp(Callback):
    """Write `checkpoint["vitkit"] = {version, format, task}` so that loading can refuse a checkpoint of
    another task or of an incompatible vitkit with a clear message (see `load_checkpoint`)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["vitkit"] = checkpoint_stamp(pl_module)


def load_checkpoint(path: str | os.PathLike, task: str | type | None = None,
                    weights_only: bool = True) -> dict[str, Any]:
    """Read a vitkit/Lightning checkpoint on CPU, weights-only by default (the file cannot run code), and check it.

    Args:
        path: the `.ckpt` file.
        task: the task that will use it (`module.Class`, or the class); a checkpoint stamped with another task
            is refused. None skips that check.
        weights_only: False unpickles arbitrary Python objects: only for files whose origin you trust.

    Raises:
        CheckpointError naming the file: missing, unreadable or truncated, holding objects that weights-only
        loading refuses, not a Lightning checkpoint, written by another task or by an incompatible vitkit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; expected a .ckpt file written by `train.py fit`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(err)}); "
                                  "the file may be corrupt") from err
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
        found = f"it holds the Python global {names[0]}" if names else _first_line(err)
        raise CheckpointError(
            f"{path}: refused by weights-only loading ({found}); vitkit loads checkpoints weights-only so that opening "
            "a file cannot run code. Expected tensors and plain values (a checkpoint written by vitkit); re-save it "
            "that way, or, for a file you trust, call vitkit.faults.load_checkpoint(path, weights_only=False)"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ValueError ... for damaged files
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {_first_line(err)}); expected a torch.save "
            "file written by vitkit (the file may be truncated or corrupt)"
        ) from err
    check_checkpoint(ckpt, path, task)
    return ckpt


def check_checkpoint(ckpt: Any, path: str | os.PathLike, task: str | type | None = None) -> None:
    """Raise CheckpointError when `ckpt` is not a Lightning checkpoint, or is stamped with another task or format."""
    from . import __version__

    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint (no 'state_dict'; found {keys}); expected a .ckpt written by "
            "`train.py fit`. To start a model from plain weights use model.init_args.pretrained"
        )
    stamp = ckpt.get("vitkit")
    if stamp is None:
        if task is not None:
            _say(f"{path}: no vitkit stamp (written by an older vitkit or plain Lightning); loading it unchecked")
        return
    if stamp.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: written by vitkit {stamp.get('version')} in checkpoint format {stamp.get('format')}; this is "
            f"vitkit {__version__}, which reads format {CHECKPOINT_FORMAT}. Use the vitkit version that wrote it"
        )
    expected = task_name(task) if isinstance(task, type) else task
    if expected is not None and not same_task(stamp.get("task"), expected):
        raise CheckpointError(
            f"{path}: a checkpoint of {stamp.get('task')}; this run's task is {expected}. A checkpoint resumes or "
            "evaluates only the task that wrote it; to start from its encoder use model.init_args.pretrained"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
