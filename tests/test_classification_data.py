"""Tests of the classification data layer: splits, batches, image decoding, image folders, transforms, errors."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from vitkit.data import ClassificationDataModule, list_images, load_rgb, scan_images
from vitkit.errors import ConfigError, CorruptImageError, DatasetNotFoundError

GRAY = 90  # value of the grayscale test image


def _png(path: Path, image: Image.Image) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path)


def _rgb(color: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> Image.Image:
    return Image.new("RGB", size, color)


def _truncated_jpeg(path: Path) -> str:
    """A JPEG cut in half: PIL can read its header but not decode it."""
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, str]:
    """ImageFolder: train/ and val/ with cat, dog; train/cat adds a gray PNG and a truncated JPEG, dog an RGBA PNG."""
    root = tmp_path / "photos"
    for i in range(4):
        _png(root / "train" / "cat" / f"c{i}.png", _rgb((200, 30, 30)))
        _png(root / "train" / "dog" / f"d{i}.png", _rgb((30, 30, 200)))
    gray = _png(root / "train" / "cat" / "gray.png", Image.new("L", (20, 20), GRAY))
    rgba = _png(root / "train" / "dog" / "rgba.png", Image.new("RGBA", (20, 20), (10, 200, 10, 0)))
    broken = _truncated_jpeg(root / "train" / "cat" / "broken.jpg")
    for name, color in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        _png(root / "val" / name / "v.png", _rgb(color))
    return {"root": str(root), "gray": gray, "rgba": rgba, "broken": broken}


def _split_indices(dm: ClassificationDataModule, split: str) -> list[int]:
    """Indices into load_digits() of one split, read from its sample names ("digits/<split>/<index>")."""
    return [int(name.rsplit("/", 1)[1]) for name in dm.get_dataset(split).names]


# --- digits ---


def test_digits_split_is_stratified_disjoint_and_seeded():
    dm = ClassificationDataModule(dataset="digits", seed=0)
    splits = {split: _split_indices(dm, split) for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 1258, "val": 180, "test": 359}
    assert set().union(*map(set, splits.values())) == set(range(1797))  # disjoint and complete
    overall = np.bincount(load_digits().target)
    test_counts = np.bincount(dm.get_dataset("test").labels, minlength=10)
    assert np.all(np.abs(test_counts - overall * 0.2) <= 1)  # each class keeps its share
    again = ClassificationDataModule(dataset="digits", seed=0)
    assert _split_indices(again, "test") == splits["test"]
    other = ClassificationDataModule(dataset="digits", seed=1)
    assert _split_indices(other, "test") != splits["test"]


def test_digits_batches_are_normalised_rgb_with_int64_labels():
    dm = ClassificationDataModule(dataset="digits", img_size=24, batch_size=16, mean=(0.5, 0.5, 0.5), std=(0.5,) * 3)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 24, 24) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (16,) and 0 <= labels.min() <= labels.max() <= 9
    images, _ = next(iter(dm.val_dataloader()))
    assert images.min().item() == pytest.approx(-1.0) and images.max().item() <= 1.0  # (x/255 - 0.5) / 0.5
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])  # gray -> RGB
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]


def test_predict_on_test_split_names_each_sample():
    dm = ClassificationDataModule(dataset="digits", batch_size=8)
    dm.setup("predict")
    images, names = next(iter(dm.predict_dataloader()))
    assert images.shape == (8, 3, 32, 32)
    assert isinstance(names, list) and names == dm.get_dataset("test").names[:8]
    assert all(name.startswith("digits/test/") for name in names)


# --- transforms from config ---


def test_yaml_transform_list_is_applied():
    resize = {"name": "Resize", "height": 32, "width": 32}
    plain = ClassificationDataModule(dataset="digits", train_transforms=[resize])
    flipped = ClassificationDataModule(dataset="digits", train_transforms=[resize, {"name": "VerticalFlip", "p": 1.0}])
    image, _ = plain.get_dataset("train")[0]  # (3, H, W)
    flipped_image, _ = flipped.get_dataset("train")[0]
    assert torch.equal(flipped_image, torch.flip(image, dims=[1]))  # upside down
    assert not torch.equal(flipped_image, image)


def test_unknown_transform_name_names_the_field_and_a_close_match():
    with pytest.raises(ConfigError, match=r"data\.train_transforms\[0\].*HorizontalFlipp.*HorizontalFlip"):
        ClassificationDataModule(train_transforms=[{"name": "HorizontalFlipp", "p": 0.5}])


def test_bad_transform_argument_names_the_transform():
    with pytest.raises(ConfigError, match=r"data\.eval_transforms\[1\].*VerticalFlip.*prob"):
        ClassificationDataModule(eval_transforms=[{"name": "Resize", "height": 8, "width": 8},
                                                  {"name": "VerticalFlip", "prob": 1.0}])


def test_out_of_range_fraction_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.val_fraction.*1\.5"):
        ClassificationDataModule(val_fraction=1.5)


# --- image decoding ---


def test_load_rgb_makes_three_channels_from_gray_and_rgba(photos):
    gray = load_rgb(photos["gray"])
    assert gray.shape == (20, 20, 3) and gray.dtype == np.uint8 and np.all(gray == GRAY)
    rgba = load_rgb(photos["rgba"])
    assert rgba.shape == (20, 20, 3) and tuple(rgba[0, 0]) == (10, 200, 10)  # alpha dropped, colour kept


def test_load_rgb_scales_16_bit_images(tmp_path):
    path = _png(tmp_path / "deep.png", Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16)))
    assert np.all(load_rgb(path) == 127)  # not clipped to white


def test_unreadable_files_raise_errors_naming_them(tmp_path, photos):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(100))
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("noise.png", "empty.jpg"):
        with pytest.raises(CorruptImageError, match=name):
            load_rgb(tmp_path / name)
    with pytest.raises(CorruptImageError, match=r"broken\.jpg.*skip_corrupt"):
        load_rgb(photos["broken"])
    with pytest.raises(DatasetNotFoundError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")
    good, bad = scan_images([photos["gray"], photos["broken"]])
    assert good == [photos["gray"]] and [path for path, _ in bad] == [photos["broken"]]


# --- image folders ---


def test_imagefolder_classes_and_batches(photos):
    dm = ClassificationDataModule(dataset="imagefolder", root=photos["root"], img_size=16, batch_size=4)
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"]
    dataset = dm.get_dataset("val")
    assert len(dataset) == 2 and [label for _, label in dataset.samples] == [0, 1]
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 1]


def test_corrupt_image_raises_when_loaded_naming_the_file(photos):
    dm = ClassificationDataModule(dataset="imagefolder", root=photos["root"], img_size=16)
    dataset = dm.get_dataset("train")
    assert len(dataset) == 11  # no scan without skip_corrupt: the broken file is still listed
    broken = next(i for i, (path, _) in enumerate(dataset.samples) if path == photos["broken"])
    with pytest.raises(CorruptImageError, match=r"broken\.jpg"):
        dataset[broken]
    gray = next(i for i, (path, _) in enumerate(dataset.samples) if path == photos["gray"])
    assert dataset[gray][0].shape == (3, 16, 16)


def test_skip_corrupt_drops_and_counts_unreadable_files(photos, caplog):
    dm = ClassificationDataModule(dataset="imagefolder", root=photos["root"], img_size=16, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="vitkit"), pytest.warns(UserWarning, match="1 unreadable"):
        dm.setup("fit")
    assert [path for path, _ in dm.skipped] == [photos["broken"]]
    assert len(dm.get_dataset("train")) == 10  # one fewer than the 11 files
    assert "broken.jpg" in caplog.text
    images = torch.stack([image for image, _ in dm.get_dataset("train")])  # everything left decodes
    assert images.shape == (10, 3, 16, 16)


def test_imagefolder_without_val_is_split_by_class(tmp_path):
    root = tmp_path / "flowers"
    for name, color in (("rose", (220, 20, 60)), ("tulip", (255, 200, 0))):
        for i in range(10):
            _png(root / "train" / name / f"{i}.png", _rgb(color))
    dm = ClassificationDataModule(dataset="imagefolder", root=str(root), val_fraction=0.2, img_size=16)
    train, val = dm.get_dataset("train").samples, dm.get_dataset("val").samples
    assert len(train) == 16 and len(val) == 4
    assert sorted(label for _, label in val) == [0, 0, 1, 1]
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert dm.get_dataset("test").samples == val  # no test folder: test on val


def test_dataloader_workers_do_not_repeat_each_others_augmentations(tmp_path):
    root = tmp_path / "same"
    for name in ("a", "b"):
        for i in range(4):
            _png(root / "train" / name / f"{i}.png", _rgb((128, 128, 128)))
            _png(root / "val" / name / f"{i}.png", _rgb((128, 128, 128)))
    jitter = [{"name": "RandomBrightnessContrast", "brightness_limit": 0.5, "contrast_limit": 0.0, "p": 1.0}]
    dm = ClassificationDataModule(dataset="imagefolder", root=str(root), img_size=8, batch_size=2,
                                  num_workers=2, train_transforms=jitter)
    batches = [images for images, _ in dm.train_dataloader()]  # worker 0 makes batch 0, worker 1 batch 1
    assert not torch.equal(batches[0], batches[1])


# --- torchvision datasets ---


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format: magic (0, 0, uint8 code 0x08, number of dims), big-endian int32 dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_files_give_rgb_batches_val_split_and_official_test(tmp_path):
    """A tiny MNIST in torchvision's layout (2 classes): val comes out of train, test is the official test set."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 20), ("t10k", 6)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 2)
    dm = ClassificationDataModule(dataset="mnist", root=str(tmp_path), val_fraction=0.2, img_size=28, batch_size=6,
                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert len(dm.get_dataset("train")) == 16 and len(dm.get_dataset("val")) == 4
    assert sorted(dm.get_dataset("val").labels.tolist()) == [0, 0, 1, 1]
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (6, 3, 28, 28) and labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])  # gray -> RGB
    assert dm.get_dataset("predict").names[:2] == ["mnist/test/0", "mnist/test/1"]


# --- missing data ---


def test_missing_torchvision_dataset_says_where_and_how_to_get_it(tmp_path):
    dm = ClassificationDataModule(dataset="cifar10", root=str(tmp_path))
    assert dm.num_classes == 10 and dm.class_names[0] == "airplane"  # known without the files
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py") as info:
        dm.setup("fit")
    assert str(tmp_path) in str(info.value) and "download" in str(info.value)


def test_missing_imagefolder_root_names_the_expected_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nowhere" / "train")):
        ClassificationDataModule(dataset="imagefolder", root=str(tmp_path / "nowhere"))


def test_predict_dir_yields_sorted_paths(tmp_path, photos):
    folder = tmp_path / "inbox"
    paths = [_png(folder / "b.png", _rgb((1, 2, 3))), _png(folder / "sub" / "a.jpg", _rgb((4, 5, 6)))]
    (folder / "notes.txt").write_text("not an image")
    dm = ClassificationDataModule(dataset="imagefolder", root=photos["root"], img_size=16, predict_dir=str(folder))
    dm.setup("predict")
    images, names = next(iter(dm.predict_dataloader()))
    assert names == sorted(paths) and images.shape == (2, 3, 16, 16)
    with pytest.raises(DatasetNotFoundError, match="data.predict_dir"):
        list_images(tmp_path / "empty_or_missing")


# --- RandAugment / TrivialAugment ---


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_changes_training_draws_but_not_eval_images(policy):
    resize = [{"name": "Resize", "height": 16, "width": 16}]  # deterministic, so only the auto-augment step is random
    dm = ClassificationDataModule(dataset="digits", img_size=16, auto_augment=policy, train_transforms=resize)
    plain = ClassificationDataModule(dataset="digits", img_size=16, train_transforms=resize)
    train = dm.get_dataset("train")
    draws = [train[i][0] for i in (0, 0, 0, 0)]  # the same image four times
    assert sum(not torch.equal(draws[0], d) for d in draws[1:]) >= 2
    assert draws[0].shape == (3, 16, 16) and draws[0].dtype == torch.float32
    assert any(not torch.equal(d, plain.get_dataset("train")[0][0]) for d in draws)
    for i in (0, 1):  # eval images are exactly those of the pipeline without auto-augment
        assert torch.equal(dm.get_dataset("val")[i][0], plain.get_dataset("val")[i][0])


def test_auto_augment_is_reproducible_from_the_pipeline_seed():
    def draws(seed: int) -> list[torch.Tensor]:
        dm = ClassificationDataModule(dataset="digits", img_size=16, auto_augment="randaugment", train_transforms=[])
        dm.train_transform.set_random_seed(seed)
        return [dm.get_dataset("train")[0][0] for _ in range(3)]

    torch.manual_seed(123)  # the step keeps its own torch seed: the global torch stream neither drives nor moves
    first, state = draws(1), torch.get_rng_state()
    assert torch.equal(state, torch.get_rng_state()) and all(map(torch.equal, first, draws(1)))
    assert not all(map(torch.equal, first, draws(2)))


def test_auto_augment_none_keeps_the_default_pipeline():
    default = ClassificationDataModule(dataset="digits")
    none = ClassificationDataModule(dataset="digits", auto_augment="none")
    assert repr(none.train_transform) == repr(default.train_transform)
    assert "TorchvisionAutoAugment" not in repr(none.train_transform)
    rand = ClassificationDataModule(dataset="digits", auto_augment="randaugment", randaugment_magnitude=5)
    names = [type(t).__name__ for t in rand.train_transform.transforms]
    assert names == ["Resize", "Affine", "TorchvisionAutoAugment", "Normalize", "ToTensorV2"]
    assert "TorchvisionAutoAugment" not in repr(rand.eval_transform)


def test_bad_auto_augment_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"data\.auto_augment.*'autoaugment'.*randaugment, trivialaugment"):
        ClassificationDataModule(auto_augment="autoaugment")
    with pytest.raises(ConfigError, match=r"data\.randaugment_magnitude.*31.*0\.\.30"):
        ClassificationDataModule(auto_augment="randaugment", randaugment_magnitude=31)


# --- class subsets ---


def test_class_subset_relabels_digits_in_the_given_order():
    full = ClassificationDataModule(dataset="digits")
    dm = ClassificationDataModule(dataset="digits", classes=[5, 6, 7, 8, 9])
    assert dm.num_classes == 5 and dm.class_names == ["5", "6", "7", "8", "9"]
    for split in ("train", "val", "test"):
        labels, all_labels = dm.get_dataset(split).labels, full.get_dataset(split).labels
        assert set(labels.tolist()) == {0, 1, 2, 3, 4}
        assert len(labels) == np.sum(all_labels >= 5)  # exactly the images of classes 5..9, about half
        assert abs(len(labels) / len(all_labels) - 0.5) < 0.05
    digits = load_digits().target
    test = dm.get_dataset("test")
    assert all(digits[int(name.rsplit("/", 1)[1])] == label + 5 for name, label in zip(test.names, test.labels))
    swapped = ClassificationDataModule(dataset="digits", classes=[9, 0])
    assert swapped.class_names == ["9", "0"]
    names, labels = swapped.get_dataset("test").names, swapped.get_dataset("test").labels
    assert all(digits[int(n.rsplit("/", 1)[1])] == (9 if y == 0 else 0) for n, y in zip(names, labels))


def test_class_subset_of_an_image_folder(photos):
    dm = ClassificationDataModule(dataset="imagefolder", root=photos["root"], img_size=8, classes=[1])
    assert dm.class_names == ["dog"] and dm.num_classes == 1
    train = dm.get_dataset("train").samples
    assert len(train) == 5 and all("/dog/" in path and label == 0 for path, label in train)


def test_class_index_out_of_range_names_the_field_and_valid_range():
    with pytest.raises(ConfigError, match=r"data\.classes.*found \[3, 10\].*0\.\.9.*\[10\]"):
        ClassificationDataModule(dataset="digits", classes=[3, 10])
    with pytest.raises(ConfigError, match=r"data\.classes.*repeated: \[3\]"):
        ClassificationDataModule(dataset="digits", classes=[3, 3])
