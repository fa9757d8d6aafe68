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


def test_every_shapes_data_module_takes_one_shapes_option_with_the_older_spellings_as_aliases(tmp_path):
    from vitkit.data import CaptioningDataModule, DetectionDataModule, SegmentationDataModule, VQADataModule
    from vitkit.data.shapes import ShapesConfig
    from vitkit.errors import ConfigError

    wanted = ShapesConfig(num_train=40)
    seg = SegmentationDataModule(root=str(tmp_path), shapes={"num_train": 40})
    det = DetectionDataModule(shapes={"num_train": 40})
    cap = CaptioningDataModule(root=str(tmp_path / "cap"), shapes={"num_train": 40})
    vqa = VQADataModule(root=str(tmp_path / "vqa"), shapes={"num_train": 40})
    assert seg.shapes_config == det.shapes_cfg == cap._shapes_config() == vqa._shapes_config() == wanted
    assert seg.dataset_root == wanted.folder(tmp_path / "shapes") != str(tmp_path / "shapes"), "own folder"
    assert det.root == wanted.folder("datasets/shapes")
    assert DetectionDataModule(shapes_config={"num_train": 40}).shapes_cfg == wanted  # older spelling
    assert CaptioningDataModule(root=str(tmp_path / "c2"), shapes_num_train=40)._shapes_config() == wanted
    with pytest.raises(ConfigError, match=r"data.shapes: .*expected null when the older data.shapes_config"):
        DetectionDataModule(shapes={"num_train": 40}, shapes_config={"num_train": 40})
    with pytest.raises(ConfigError, match=r"data.shapes: .*unknown: \['num_trian'\]"):
        SegmentationDataModule(root=str(tmp_path), shapes={"num_trian": 40})
    with pytest.raises(ConfigError, match=r"data.shapes: .*null unless data.dataset is shapes"):
        DetectionDataModule(dataset="coco", shapes={"num_train": 40})
