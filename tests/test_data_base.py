"""The spine every data module shares (`vitkit.data.base.VitkitDataModule`): a new data module writes only
`build_dataset(split)` (and its collate) and gets setup, cached splits, the four loaders and seeded loading."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from vitkit.data import ClassificationDataModule, DetectionDataModule, SegmentationDataModule
from vitkit.data.base import VitkitDataModule
from vitkit.data.captioning import CaptioningDataModule, VQADataModule
from vitkit.data.text import Seq2SeqDataModule


class Squares(VitkitDataModule):
    def __init__(self, batch_size: int = 4, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.built: list[str] = []

    def build_dataset(self, split: str) -> TensorDataset:
        self.built.append(split)
        x = torch.arange(10 if split == "train" else 6, dtype=torch.float32)
        return TensorDataset(x, x**2)


def test_a_new_data_module_needs_only_build_dataset():
    dm = Squares()
    dm.setup("fit")
    assert dm.built == ["train", "val"]
    assert dm.get_dataset("train") is dm.get_dataset("train") and dm.built == ["train", "val"]  # built once
    assert sum(len(x) for x, _ in dm.train_dataloader()) == 10 and len(dm.val_dataloader()) == 2
    torch.manual_seed(0)
    first = torch.cat([x for x, _ in dm.train_dataloader()])
    assert sorted(first.tolist()) == list(range(10)) and first.tolist() != list(range(10))  # the train loader shuffles
    dm.forget_datasets()
    dm.get_dataset("test")
    assert dm.built[-1] == "test"
    with pytest.raises(ValueError, match="split 'dev' is not one of train, val, test, predict"):
        dm.get_dataset("dev")


@pytest.mark.parametrize("module", [ClassificationDataModule, SegmentationDataModule, DetectionDataModule,
                                    Seq2SeqDataModule, CaptioningDataModule, VQADataModule])
def test_every_vitkit_data_module_is_built_on_the_spine(module):
    assert issubclass(module, VitkitDataModule)
    assert module.build_dataset is not VitkitDataModule.build_dataset
