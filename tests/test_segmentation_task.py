"""Semantic segmentation: mIoU against an independent numpy computation, sliding-window stitching, the heads
on vitkit and timm encoders, the data module's readers (folder, ADE20K, VOC) and its errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

import vitkit
from vitkit.data import SegmentationDataModule, reduce_zero_label
from vitkit.data.segmentation import ADE20K_CLASSES, VOC_CLASSES, collate_segmentation
from vitkit.errors import ConfigError, DataError, DatasetNotFoundError
from vitkit.models.segmenter import create_segmenter, list_segmenters, sliding_window_logits, window_starts
from vitkit.tasks import SemanticSegmenter
from vitkit.tasks.optim import build_adamw
from vitkit.tasks.seg_metrics import confusion_metric, palette, scores_from_confusion

TINY_ENCODER = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_task(num_classes: int = 5, **kw) -> SemanticSegmenter:
    model_kwargs = {"encoder_kwargs": TINY_ENCODER, "head_kwargs": {"depth": 1}, **kw.pop("model_kwargs", {})}
    return SemanticSegmenter(model="segmenter_vit_tiny_patch8_64", num_classes=num_classes, img_size=32,
                             model_kwargs=model_kwargs, **kw)


# --------------------------------------------------------------------------- metrics
def numpy_scores(preds: list[np.ndarray], targets: list[np.ndarray], K: int, ignore: int = 255):
    """Reference: one confusion matrix over every labelled pixel of every image, then IoU per class."""
    cm = np.zeros((K, K), dtype=np.int64)
    for p, t in zip(preds, targets):
        keep = t != ignore
        np.add.at(cm, (t[keep], p[keep]), 1)
    tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return cm, iou, np.nanmean(iou), tp.sum() / cm.sum()


def random_batches(K: int, n: int = 4, seed: int = 0):
    """Label maps with ~15% ignored pixels; class K-2 never in the ground truth, class K-1 never anywhere."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        t = rng.integers(0, K - 2, size=(2, 17, 23))
        t[rng.random(t.shape) < 0.15] = 255
        p = np.where(rng.random(t.shape) < 0.6, np.clip(t, 0, K - 2), rng.integers(0, K - 1, size=t.shape))
        preds.append(p)
        targets.append(t)
    return preds, targets


def test_miou_matches_an_independent_numpy_confusion_matrix():
    K = 6
    preds, targets = random_batches(K)
    metric = confusion_metric(K, ignore_index=255)
    for p, t in zip(preds, targets):
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    matrix = metric.compute()
    cm, iou, miou, pixel_acc = numpy_scores(preds, targets, K)
    np.testing.assert_array_equal(matrix.numpy(), cm)
    scores = scores_from_confusion(matrix)
    np.testing.assert_allclose(scores.iou.numpy(), iou, equal_nan=True)
    assert scores.iou[K - 2] == 0.0, "a class predicted but absent from the ground truth counts as IoU 0"
    assert torch.isnan(scores.iou[K - 1]), "a class absent from ground truth and predictions is left out"
    assert scores.miou == pytest.approx(miou) and scores.pixel_acc == pytest.approx(pixel_acc)
    assert scores.miou == pytest.approx(np.mean(iou[: K - 1]))
    # dataset-wide, not the mean of per-batch mIoUs
    per_batch = np.mean([numpy_scores([p], [t], K)[2] for p, t in zip(preds, targets)])
    assert abs(per_batch - scores.miou) > 1e-4
    # the torchmetrics seam: its per-class IoU with ignore_index agrees on every class that occurs
    jac = MulticlassJaccardIndex(K, average="none", ignore_index=255)
    for p, t in zip(preds, targets):
        jac.update(torch.from_numpy(p), torch.from_numpy(t))
    np.testing.assert_allclose(jac.compute().numpy()[: K - 1], iou[: K - 1], rtol=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_task_accumulates_validation_over_stacked_and_listed_batches(monkeypatch):
    """The task's own path: logits -> argmax -> confusion, over stacked batches and native-size lists."""
    K = 5
    task = tiny_task(K).eval()
    preds, targets = random_batches(K, n=3, seed=1)
    pending = [torch.from_numpy(p) for p in preds[:2]] + [torch.from_numpy(preds[2][i : i + 1]) for i in range(2)]
    monkeypatch.setattr(task, "segment", lambda x, *a, **k: F.one_hot(pending.pop(0), K).permute(0, 3, 1, 2).float())
    for _p, t in zip(preds[:2], targets[:2]):
        task.validation_step({"image": torch.zeros(2, 3, *t.shape[1:]), "mask": torch.from_numpy(t),
                              "path": ["a", "b"]}, 0)
    t = targets[2]  # a batch of two images kept as a list, as for images of different sizes
    task.validation_step({"image": [torch.zeros(3, *t.shape[1:])] * 2, "mask": [torch.from_numpy(m) for m in t],
                          "path": ["c", "d"]}, 0)
    cm = numpy_scores(preds, targets, K)[0]
    np.testing.assert_array_equal(task.val_confusion.compute().numpy(), cm)


# --------------------------------------------------------------------------- sliding windows
def test_window_starts_cover_the_side_and_end_at_the_border():
    assert window_starts(64, 64, 43) == [0]
    assert window_starts(130, 64, 43) == [0, 43, 66]
    for size, window, stride in [(100, 64, 43), (65, 64, 64), (200, 32, 7), (64, 64, 1)]:
        starts = window_starts(size, window, stride)
        covered = np.zeros(size, dtype=bool)
        for s in starts:
            covered[s : s + window] = True
        assert (covered.all() and starts[-1] + window == size
                and all(b - a <= stride for a, b in zip(starts, starts[1:])))


def test_a_window_as_large_as_the_image_gives_the_whole_image_result():
    task = tiny_task().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(task.model, x, 32, 21, 5), task.model(x), rtol=0, atol=0)
        torch.testing.assert_close(task.segment(x), task.model(x), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(100, 130), (32, 77), (20, 25)])
def test_overlapping_windows_stitch_every_pixel_in_place(size):
    """With a function that copies its input, the stitched map equals the image: every pixel covered, each
    window written back where it came from, overlaps averaged; smaller images are padded and cropped back."""
    x = torch.randn(2, 3, *size)
    seen = []

    def copy(crops):
        seen.append(tuple(crops.shape[-2:]))
        return crops.repeat(1, 2, 1, 1)  # (n, 3, 32, 32) -> (n, 6, 32, 32)

    out = sliding_window_logits(copy, x, window=32, stride=21, num_classes=6, max_batch=4)
    assert out.shape == (2, 6, *size) and set(seen) == {(32, 32)}
    torch.testing.assert_close(out, x.repeat(1, 2, 1, 1))
    ones = sliding_window_logits(lambda c: torch.ones(c.shape[0], 1, 32, 32), x, 32, 21, 1)
    assert torch.equal(ones, torch.ones(2, 1, *size)), "some pixel got no window"


def test_segment_larger_image_and_flip_tta_is_mirror_consistent():
    task = tiny_task(eval_resize=False, slide_stride=16).eval()
    x = torch.randn(1, 3, 45, 70)
    scores = task.segment(x)
    assert scores.shape == (1, 5, 45, 70) and torch.isfinite(scores).all()
    probs = task.segment(x, scales=(0.75, 1.0, 1.5), flip=True)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 45, 70))
    mirrored = task.segment(x.flip(-1), scales=(0.75, 1.0, 1.5), flip=True)
    torch.testing.assert_close(mirrored.flip(-1), probs, atol=1e-5, rtol=1e-4)


def test_eval_resize_scores_at_mask_resolution():
    """eval_resize: the network sees short side = img_size, the logits come back at the image's own size."""
    task = tiny_task().eval()
    sizes = []
    task.model.forward = lambda crops, f=task.model.forward: (sizes.append(tuple(crops.shape[-2:])), f(crops))[1]
    out = task.segment(torch.randn(1, 3, 48, 96))
    assert out.shape == (1, 5, 48, 96) and set(sizes) == {(32, 32)}
    assert task._network_input(torch.randn(1, 3, 48, 96), 1.0).shape[-2:] == (32, 64)


# --------------------------------------------------------------------------- models and heads
@pytest.mark.parametrize("head", ["linear", "mask_transformer", "conv"])
@pytest.mark.parametrize("encoder", ["vit", "vit_small_patch16_224", "timm:vit_tiny_patch16_224"])
def test_every_head_on_vitkit_and_timm_encoders(head, encoder):
    enc = {"depth": 1} if encoder == "vit_small_patch16_224" else {**TINY_ENCODER, "patch_size": 8}
    head_kwargs = {"depth": 1} if head == "mask_transformer" else {"channels": 16} if head == "conv" else {}
    model = create_segmenter("segmenter_vit_tiny_patch8_64", num_classes=4, img_size=32, head=head, encoder=encoder,
                             encoder_kwargs=enc, head_kwargs=head_kwargs)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 4, 32, 32) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, 4, (2, 32, 32))).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"no gradient reaches {no_grad}"


@pytest.mark.parametrize("encoder", ["vit_tiny_patch16_224", "timm:vit_tiny_patch16_224"])
def test_encoder_weights_from_a_timm_checkpoint_file(encoder, tmp_path):
    """`pretrained` fills the encoder from a timm ViT file (position embeddings resampled 14x14 -> 2x2); the
    head stays freshly initialised."""
    import timm

    source = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = create_segmenter("segmenter_vit_tiny_patch16_512", num_classes=3, img_size=32, encoder=encoder,
                             head="linear", encoder_kwargs={"depth": 1}, pretrained=str(tmp_path / "vit.pth"))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert model.encoder.pos_embed.shape == (1, 1 + 4, 192)


def test_layer_decay_keeps_the_head_at_full_lr_and_no_decay_on_class_embeddings():
    task = tiny_task(model_kwargs={"encoder_kwargs": {**TINY_ENCODER, "depth": 2}})
    opt = build_adamw(task.model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    group = {n: g for g in opt.param_groups for n, p in task.model.named_parameters()
             if any(p is q for q in g["params"])}
    # groups as for a classifier: stem 0, blocks 1..2 (final norm with the last), head 3 -> lr * 0.5 ** (3 - group)
    assert group["head.proj_dec.weight"]["lr"] == group["head.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-3)
    assert (group["encoder.blocks.1.attn.qkv.weight"]["lr"] == group["encoder.norm.weight"]["lr"]
            == pytest.approx(1e-3 * 0.5))
    assert group["encoder.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-3 * 0.25)
    assert group["encoder.pos_embed"]["lr"] == pytest.approx(1e-3 * 0.125)
    assert group["head.cls_emb"]["weight_decay"] == 0 and group["encoder.pos_embed"]["weight_decay"] == 0
    assert group["head.blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05


def test_registry_and_clear_errors(tmp_path):
    assert {"segmenter_vit_small_patch16_512", "segmenter_vit_tiny_patch8_64"} <= set(list_segmenters())
    # one registry: segmenters are vitkit models of the family "segmentation", not image encoders
    assert list_segmenters() == vitkit.list_models(family="segmentation")
    assert not set(list_segmenters()) & set(vitkit.list_models())
    # `pretrained` reaches the encoder (the file holds an encoder's weights, not a whole segmenter's)
    source = vitkit.create_model("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32).encoder
    torch.save(source.state_dict(), tmp_path / "encoder.pth")
    model = vitkit.create_model("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32,
                                pretrained=tmp_path / "encoder.pth")
    torch.testing.assert_close(model.encoder.state_dict(), source.state_dict())
    with pytest.raises(ValueError, match="did you mean segmenter_vit_small_patch16_512"):
        create_segmenter("segmenter_vit_smal_patch16_512")
    with pytest.raises(ConfigError, match="unknown segmentation head 'fancy'"):
        tiny_task(model_kwargs={"head": "fancy"})
    with pytest.raises(ConfigError, match="class_weights has 2 values; expected num_classes=5"):
        tiny_task(class_weights=[1.0, 2.0])


def test_class_weights_and_ignored_pixels_in_the_loss():
    task = tiny_task(3, class_weights=[1.0, 2.0, 0.5])
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    target[0, :4] = 255
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255)
    torch.testing.assert_close(task.pixel_loss(logits, target), expected)
    assert task.pixel_loss(logits, torch.full_like(target, 255)) == 0, "an all-ignored batch gives 0, not NaN"


# --------------------------------------------------------------------------- data
def write_folder(root, split: str, items: dict[str, tuple[np.ndarray, np.ndarray | None]],
                 mask_mode: str = "L") -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    for name, (image, mask) in items.items():
        Image.fromarray(image).save(root / split / "images" / f"{name}.jpg")
        if mask is not None:
            Image.fromarray(mask, mode=mask_mode).save(root / split / "masks" / f"{name}.png")


def scene(h: int, w: int, seed: int, K: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.integers(0, K, (h, w)).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    write_folder(tmp_path, "train", {f"t{i}": scene(40, 50, i) for i in range(4)})
    write_folder(tmp_path, "val", {"small": scene(24, 30, 10), "wide": scene(40, 90, 11)})
    return tmp_path


def test_folder_dataset_batches_pad_with_ignore_and_keep_eval_resolution(folder):
    dm = SegmentationDataModule("folder", root=str(folder), img_size=64, batch_size=2, scale_range=(1.0, 1.0))
    assert dm.num_classes == 3 and dm.class_names == ["background", "cat", "dog"] and dm.ignore_index == 255
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
            and batch["mask"].dtype == torch.int64)
    # 40x50 scaled to short side 64 is 64x80: the crop is full; a 24x30 image in eval keeps its size
    val = next(iter(dm.val_dataloader()))
    assert isinstance(val["image"], list) and [tuple(m.shape) for m in val["mask"]] == [(24, 30), (40, 90)]
    np.testing.assert_array_equal(val["mask"][0].numpy(), np.asarray(Image.open(folder / "val/masks/small.png")))
    small = SegmentationDataModule("folder", root=str(folder), img_size=64, batch_size=2, scale_range=(0.5, 0.5))
    small.setup("fit")
    padded = next(iter(small.train_dataloader()))["mask"]
    assert (padded == 255).any() and (padded != 255).any(), "padding to the crop is filled with the ignore value"


def test_yaml_pipeline_replaces_the_default(folder):
    steps = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 32, "y_max": 32}, {"name": "HorizontalFlip", "p": 1.0}]
    dm = SegmentationDataModule("folder", root=str(folder), img_size=32, batch_size=4, train_transforms=steps)
    item = dm.get_dataset("train")[0]
    raw = np.asarray(Image.open(folder / "train/masks/t0.png"))
    assert item["image"].shape == (3, 32, 32)
    np.testing.assert_array_equal(item["mask"].numpy(), raw[:32, :32][:, ::-1])


def test_mask_of_another_size_names_both_files(folder):
    write_folder(folder, "train", {"t0": (scene(40, 50, 0)[0], scene(41, 50, 0)[1])})
    dm = SegmentationDataModule("folder", root=str(folder), img_size=32)
    with pytest.raises(DataError, match=r"t0\.png: mask is 50x41 \(width x height\) but its image .*t0\.jpg is 50x40"):
        dm.get_dataset("train")[0]


def test_label_out_of_range_names_the_file_and_values(folder):
    image, mask = scene(40, 50, 0)
    mask[0, :5] = 7
    mask[1, :5] = 255  # the ignore value is fine
    write_folder(folder, "train", {"t0": (image, mask)})
    dm = SegmentationDataModule("folder", root=str(folder), img_size=32)
    with pytest.raises(DataError, match=r"t0\.png .*label value\(s\) 7 in 5 pixel\(s\) are >= num_classes=3 "
                                        r"and not the ignore value 255"):
        dm.get_dataset("train")[0]


def test_image_without_mask_is_listed(folder):
    write_folder(folder, "train", {"lonely": (scene(40, 50, 0)[0], None)})
    dm = SegmentationDataModule("folder", root=str(folder), img_size=32)
    with pytest.raises(DataError,
                       match=r"1 of 5 image\(s\) have no mask file: .*lonely\.jpg \(no .*masks/lonely\.png\)"):
        dm.setup("fit")


def test_colour_masks_and_missing_class_list_are_refused(folder, tmp_path_factory):
    image, mask = scene(40, 50, 0)
    write_folder(folder, "train", {"t0": (image, np.stack([mask] * 3, axis=-1))}, mask_mode="RGB")
    with pytest.raises(DataError, match="mask has mode RGB .* expected a single-channel PNG"):
        SegmentationDataModule("folder", root=str(folder), img_size=32).get_dataset("train")[0]
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError, match="classes.txt: class list not found"):
        SegmentationDataModule("folder", root=str(empty))


def test_ade20k_reduce_zero_label(tmp_path):
    mask = np.array([[0, 1, 2], [150, 255, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(mask), [[255, 0, 1], [149, 255, 2]])
    ade = tmp_path / "ADEChallengeData2016"
    for part in ("training", "validation"):
        (ade / "images" / part).mkdir(parents=True)
        (ade / "annotations" / part).mkdir(parents=True)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(ade / "images" / part / "ADE_x.jpg")
        Image.fromarray(mask).save(ade / "annotations" / part / "ADE_x.png")
    dm = SegmentationDataModule("ade20k", root=str(tmp_path), img_size=32)
    assert dm.num_classes == 150 == len(ADE20K_CLASSES) and dm.class_names[0] == "wall" and dm.class_names[-1] == "flag"
    for split in ("train", "val", "test"):
        assert dm.get_dataset(split).load(0)[1].tolist() == [[255, 0, 1], [149, 255, 2]]
    raw = SegmentationDataModule("ade20k", root=str(tmp_path), img_size=32, reduce_zero_label=False)
    with pytest.raises(DataError, match="150 in 1 pixel.*reduce_zero_label: true"):
        raw.get_dataset("val").load(0)


def test_voc_palette_masks_through_torchvision_layout(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    mask = np.array([[0, 15, 15], [255, 20, 0]], dtype=np.uint8)
    for name, split in (("2007_000001", "train"), ("2007_000002", "val")):
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette().flatten().tolist())
        png.save(voc / "SegmentationClass" / f"{name}.png")
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text(name + "\n")
    dm = SegmentationDataModule("voc", root=str(tmp_path), img_size=32)
    assert dm.num_classes == 21 and dm.class_names == list(VOC_CLASSES)
    assert dm.get_dataset("train").load(0)[1].tolist() == mask.tolist()
    assert dm.get_dataset("test").samples[0][0].endswith("2007_000002.jpg")
    with pytest.raises(DatasetNotFoundError, match="Pascal VOC 2012 not found .*download: true"):
        SegmentationDataModule("voc", root=str(tmp_path / "nowhere")).get_dataset("train")


def test_missing_ade20k_and_bad_options_are_clear(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ADE20K not found .*ADEChallengeData2016.*images/training"):
        SegmentationDataModule("ade20k", root=str(tmp_path)).get_dataset("train")
    with pytest.raises(ConfigError, match="data.shapes: .* unknown: \\['bogus'\\]"):
        SegmentationDataModule("shapes", root=str(tmp_path), shapes={"bogus": 1})
    with pytest.raises(ConfigError, match="data.scale_range"):
        SegmentationDataModule("shapes", root=str(tmp_path), scale_range=(2.0, 1.0))


def test_collate_stacks_same_sizes_and_lists_others():
    a = {"image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 4), "path": "a"}
    b = {"image": torch.zeros(3, 5, 4), "mask": torch.zeros(5, 4), "path": "b"}
    same = collate_segmentation([a, a])
    assert same["image"].shape == (2, 3, 4, 4) and same["path"] == ["a", "a"]
    mixed = collate_segmentation([a, b])
    assert isinstance(mixed["image"], list) and [t.shape[1] for t in mixed["image"]] == [4, 5]
