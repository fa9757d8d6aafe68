"""Checkpoint safety: the task + version stamp, and weights-only loading that checks it."""
from __future__ import annotations

import importlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ..errors import CheckpointError
from .guards import _say

# Bump when checkpoints written by this vitkit can no longer be read by the previous one (or the reverse).
CHECKPOINT_FORMAT = 1


def task_name(task: type | pl.LightningModule) -> str:
    """The public `module.Class` of a task class or instance, as stamped into checkpoints: `vitkit.tasks.<Class>`
    for vitkit's own tasks (whichever file defines them), else the defining module."""
    from .. import tasks

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
    from .. import __version__

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
    from .. import __version__

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
