"""What every vitkit data module does the same way, written once: which splits a Lightning stage reads, one
dataset per split built on first use and kept, the four dataloader hooks, and loaders whose augmentation is
seeded (`make_loader`). A data module adds only what is its own: `build_dataset(split)`, its collate, its checks."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from .loading import STAGE_SPLITS, make_loader


class VitkitDataModule(pl.LightningDataModule):
    """A LightningDataModule over named splits ("train", "val", "test", "predict").

    Subclasses implement `build_dataset(split)` and may override `collate_fn(split)`, `batch_size_for(split)`
    and `drop_last(split, dataset)`; `setup(stage)` builds the stage's splits, `get_dataset(split)` builds one
    on first use and keeps it (`forget_datasets()` drops them, e.g. when a checkpoint brings another tokenizer).
    The hyper-parameters must hold `batch_size` and `num_workers`. The training loader shuffles.
    """

    split_names: ClassVar[tuple[str, ...]] = ("train", "val", "test", "predict")

    def __init__(self) -> None:
        super().__init__()
        self._datasets: dict[str, Dataset] = {}

    # -- datasets --
    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS[stage]:
            self.get_dataset(split)

    def get_dataset(self, split: str) -> Dataset:
        """The dataset of one split, built (read, scanned, encoded) on first use."""
        if split not in self.split_names:
            raise ValueError(f"split {split!r} is not one of {', '.join(self.split_names)}")
        if split not in self._datasets:
            self._datasets[split] = self.build_dataset(split)
        return self._datasets[split]

    def build_dataset(self, split: str) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__}.build_dataset")

    def forget_datasets(self) -> None:
        self._datasets.clear()

    # -- loaders --
    def collate_fn(self, split: str) -> Callable[[list], Any] | None:
        return None  # torch's default_collate

    def batch_size_for(self, split: str) -> int:
        return self.hparams.batch_size

    def drop_last(self, split: str, dataset: Dataset) -> bool:
        return False

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.get_dataset(split)
        return make_loader(dataset, self.batch_size_for(split), shuffle=shuffle,
                           drop_last=self.drop_last(split, dataset), num_workers=self.hparams.num_workers,
                           collate_fn=self.collate_fn(split))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
