"""Fault tolerance for every vitkit task, as Lightning callbacks: pre-emption (SIGTERM) saves a checkpoint and
exits cleanly, a non-finite loss stops the run (or skips the batch), a resumed run continues exactly where it
stopped (RNG states, shuffling, position inside the epoch), and checkpoints carry their task and vitkit version
and load weights-only. The CLI adds all four (`default_callbacks()`); each can be configured or replaced from YAML.

Modules: `guards` (Preemption, NonFiniteLoss), `resume` (ResumeState), `checkpoints` (CheckpointStamp,
load_checkpoint); every name is importable from `vitkit.faults`, as YAML class paths (`vitkit.faults.X`) expect.
"""
from __future__ import annotations

from pytorch_lightning.callbacks import Callback

from .checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointStamp,
    check_checkpoint,
    checkpoint_stamp,
    load_checkpoint,
    same_task,
    task_name,
)
from .guards import NonFiniteLoss, NonFiniteLossError, Preemption, last_checkpoint_path
from .resume import (
    ResumeState,
    _resumable_class,  # noqa: F401 - used by tests/test_faults.py
    capture_rng,
    restore_rng,
)

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointStamp", "NonFiniteLoss", "NonFiniteLossError", "Preemption", "ResumeState",
    "capture_rng", "check_checkpoint", "checkpoint_stamp", "default_callbacks", "last_checkpoint_path",
    "load_checkpoint", "restore_rng", "same_task", "task_name",
]


def default_callbacks() -> list[Callback]:
    """The fault-tolerance callbacks the CLI adds: Preemption, NonFiniteLoss, ResumeState, CheckpointStamp."""
    return [Preemption(), NonFiniteLoss(), ResumeState(), CheckpointStamp()]
