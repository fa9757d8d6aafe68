"""Exact resume: RNG states, augmentation random state, seeded shuffling and the mid-epoch position."""
from __future__ import annotations

import functools
import itertools
import os
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from .guards import _say


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
