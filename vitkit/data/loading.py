"""Loaders of every vitkit data module: a `DataLoader` whose augmentation is seeded so that `seed_everything`
reproduces a run and workers do not augment in lockstep, and which splits each Lightning stage reads. The data
module base that uses them is `vitkit.data.base.VitkitDataModule`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .transforms import seed_transform

# Which splits each Lightning stage reads (None: every split, as `setup()` without a stage).
STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",),
    None: ("train", "val", "test"),
}


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                num_workers: int = 0, collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
    """A DataLoader over `dataset`. If the dataset has an albumentations `transform`, its random state is
    seeded from torch's (so `seed_everything` applies) when loading in the main process, and per worker
    otherwise."""
    transform = getattr(dataset, "transform", None)
    if num_workers == 0 and transform is not None:
        seed_transform(transform, seed=int(torch.randint(2**31, ())))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(), collate_fn=collate_fn,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )


def _seed_worker(worker_id: int) -> None:
    """worker_init_fn: give each worker's copy of the pipeline its own random stream."""
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        seed_transform(transform, seed=info.seed % 2**32)


def __getattr__(name: str):
    if name == "SplitDataModule":  # the data-module base before it moved to `vitkit.data.base`
        from .base import VitkitDataModule

        return VitkitDataModule
    raise AttributeError(name)
