"""Detection models and task: every registered detector on a tiny variant, denoising and query selection,
YOLOS parity with transformers, the set loss, postprocessing, COCO export re-evaluated by pycocotools, a
short training run whose loss falls, and the command line end to end."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.data import DetectionDataModule
from vitkit.errors import CheckpointError, ConfigError
from vitkit.models.heads import PredictionMLP
from vitkit.models.yolos import COCO_CATEGORY_IDS, YOLOS, load_hf_yolos
from vitkit.tasks import ObjectDetector
from vitkit.tasks.detection import COCO_KEYS, SetCriterion, coco_evaluate, coco_table, postprocess
from vitkit.tasks.matcher import HungarianMatcher

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = "configs/detection/shapes_detr_nano.yaml"
TINY_DETR = {"depth": 1, "embed_dim": 64, "num_heads": 2, "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 2,
             "num_queries": 8, "pos_embed": "learn"}
TINY_SHAPES = {"img_size": 32, "min_shapes": 0, "max_shapes": 2, "min_size": 8, "max_size": 14,
               "num_train": 64, "num_val": 12, "num_test": 8}


def random_targets(sizes: list[int], classes: int = 3) -> list[dict]:
    out = []
    for n in sizes:
        centre, wh = torch.rand(n, 2) * 0.5 + 0.25, torch.rand(n, 2) * 0.3 + 0.1
        out.append({"labels": torch.randint(classes, (n,)), "boxes": torch.cat([centre, wh], 1)})
    return out


def tiny(name: str, **kw) -> torch.nn.Module:
    if name.startswith("detr"):
        p = 8 if "patch8" in name else 16
        base = {**TINY_DETR, "num_queries": 4, "img_size": 4 * p}
    else:
        base = {"depth": 2, "embed_dim": 32, "num_heads": 2, "num_det_tokens": 4, "img_size": 32, "patch_size": 8}
    return vitkit.create_model(name, num_classes=3, **{**base, **kw})


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", vitkit.list_models(family="detection"))
def test_registered_detector_tiny_variant(name):
    model = tiny(name).train()
    for m in model.modules():  # box MLPs start at 0 (first boxes = anchors): give them a trained-like state
        if isinstance(m, PredictionMLP):
            torch.nn.init.normal_(m.layers[-1].weight, std=0.02)
    x, targets = torch.randn(2, 3, *model.img_size), random_targets([2, 0])
    out = model(x, targets)
    assert out["pred_logits"].shape == (2, 4, 4) and out["pred_boxes"].shape == (2, 4, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    if name.startswith("detr"):
        assert len(out["aux_outputs"]) == 1 and out["dn"]["pred_logits"].shape[:2] == (2, 2)  # layers, batch
        assert out["enc_outputs"]["pred_boxes"].shape[1] == model.encoder.patch_embed.num_patches
    criterion = SetCriterion(3, HungarianMatcher())
    losses = criterion(out, targets)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"{name}: no gradient reaches {no_grad}"


def test_learned_queries_do_not_see_the_denoising_queries():
    """The attention mask keeps the matching part independent of the denoising part: its outputs are the same
    with or without denoising queries (and the denoising groups are independent of each other)."""
    model = tiny("detr_vit_nano_patch8_64", num_queries=6, dn_groups=3).train()
    x, targets = torch.randn(2, 3, 32, 32), random_targets([3, 1])
    with torch.no_grad():
        with_dn = model(x, targets)
        without = model(x)
    assert "dn" in with_dn and "dn" not in without
    torch.testing.assert_close(with_dn["pred_logits"], without["pred_logits"])
    torch.testing.assert_close(with_dn["pred_boxes"], without["pred_boxes"])
    mask = model.head.denoising_queries(targets).attn_mask  # (3 * 3 + 6) square
    assert mask.shape == (15, 15) and not mask[9:, :9].any() and mask[9:, 9:].all()
    assert mask[:3, :3].all() and not mask[:3, 3:9].any() and mask[:3, 9:].all()


def test_denoising_queries_are_noised_copies_of_the_targets():
    model = tiny("detr_vit_nano_patch8_64", dn_groups=4, box_noise=0.4, label_noise=0.0)
    targets = random_targets([2, 3])
    dn = model.head.denoising_queries(targets)
    assert dn.groups == 4 and dn.pad == 3 and dn.valid.sum() == 4 * 5
    boxes = dn.anchors.sigmoid()
    for g in range(4):
        got = boxes[1, g * 3 : g * 3 + 3]
        true = targets[1]["boxes"]
        assert torch.all((got[:, :2] - true[:, :2]).abs() <= 0.2 * true[:, 2:] + 1e-4)  # centre within 0.4 * wh / 2
        assert torch.all((got[:, 2:] - true[:, 2:]).abs() <= 0.4 * true[:, 2:] + 1e-4)
        assert torch.equal(dn.labels[1, g * 3 : g * 3 + 3], targets[1]["labels"])


def test_encoder_query_selection_takes_the_most_confident_proposals():
    model = tiny("detr_vit_nano_patch8_64", num_queries=3).eval()
    patches = torch.randn(2, 16, 64)
    anchors, enc = model.head.select_queries(patches)
    score = enc["pred_logits"].softmax(-1)[..., :-1].amax(-1)
    top = score.topk(3, dim=1).indices
    expected = enc["pred_boxes"].gather(1, top[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(anchors.sigmoid(), expected, atol=1e-5, rtol=1e-4)


def test_detr_encoder_loads_a_timm_vit_checkpoint(tmp_path):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=64, num_classes=7)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    model = vitkit.create_model("detr_vit_tiny_patch16", num_classes=3, depth=1, img_size=64, decoder_depth=1,
                                num_queries=4)
    report = model.load_pretrained(tmp_path / "vit.pth")
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    # the same through create_model(pretrained=...), as a config's `pretrained` or a user would pass it
    built = vitkit.create_model("detr_vit_tiny_patch16", num_classes=3, depth=1, img_size=64, decoder_depth=1,
                                num_queries=4, pretrained=tmp_path / "vit.pth")
    torch.testing.assert_close(built.encoder.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="reset_head=True applies to classifiers"):  # not silently ignored
        vitkit.create_model("detr_vit_tiny_patch16", num_classes=3, depth=1, img_size=64, decoder_depth=1,
                            num_queries=4, pretrained=tmp_path / "vit.pth", reset_head=True)


# --------------------------------------------------------------------------- YOLOS and transformers
def hf_yolos(mid: bool, num_labels: int = 7):
    from transformers import YolosConfig, YolosForObjectDetection

    cfg = YolosConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                      image_size=[32, 48], patch_size=8, num_detection_tokens=5, num_labels=num_labels,
                      use_mid_position_embeddings=mid)
    model = YolosForObjectDetection(cfg).eval()
    with torch.no_grad():  # the default init leaves position embeddings and tokens at 0: randomise everything
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("mid", [False, True], ids=["tiny-style", "mid-pos-embed"])
@pytest.mark.parametrize("size", [(32, 48), (40, 40)], ids=["native", "resampled"])
def test_yolos_matches_transformers(mid, size):
    hf = hf_yolos(mid)
    model = YOLOS(num_classes=7, img_size=size, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2,
                  num_det_tokens=5, mid_pos_embed=mid, norm_eps=1e-12).eval()
    load_hf_yolos(model, hf.state_dict(), hf_grid=(4, 6))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref, out = hf(pixel_values=x), model(x)
    assert ref.logits.std() > 0.1  # a model whose outputs depend on the weights
    torch.testing.assert_close(out["pred_logits"], ref.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["yolos_tiny", "yolos_small", "yolos_base"])
def test_published_yolos_sizes_use_the_layernorm_epsilon_of_the_transformers_checkpoints(name):
    model = vitkit.create_model(name, depth=1, img_size=64, num_classes=3)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}


def test_yolos_folder_with_config_and_coco_class_mapping(tmp_path):
    """A save_pretrained folder (config.json gives the grid); a 91-id COCO head loaded into 80 classes keeps
    the rows of COCO's 80 category ids and the no-object row."""
    hf = hf_yolos(False, num_labels=91)
    hf.save_pretrained(tmp_path / "yolos")
    model = YOLOS(num_classes=80, img_size=(32, 48), patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2,
                  num_det_tokens=5, norm_eps=1e-12).eval()
    model.load_pretrained(tmp_path / "yolos")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref, out = hf(pixel_values=x), model(x)
    torch.testing.assert_close(out["pred_logits"], ref.logits[..., list(COCO_CATEGORY_IDS) + [91]],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, atol=1e-5, rtol=1e-4)


def test_yolos_checkpoint_that_does_not_fit_is_a_clear_error():
    hf = hf_yolos(True)
    model = YOLOS(num_classes=7, img_size=(32, 48), patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2,
                  num_det_tokens=5, mid_pos_embed=False)
    with pytest.raises(CheckpointError, match="mid position embeddings; build the model with mid_pos_embed=True"):
        load_hf_yolos(model, hf.state_dict(), hf_grid=(4, 6))
    model = YOLOS(num_classes=5, img_size=(32, 48), patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2,
                  num_det_tokens=5, mid_pos_embed=True)
    with pytest.raises(CheckpointError, match="predicts 7 classes, the model 5"):
        load_hf_yolos(model, hf.state_dict(), hf_grid=(4, 6))


# --------------------------------------------------------------------------- loss and postprocessing
def test_perfect_predictions_have_no_box_loss_and_low_class_loss():
    targets = random_targets([2, 1])
    logits = torch.full((2, 5, 4), -8.0)
    logits[..., 3] = 8.0  # everything "no object" ...
    boxes = torch.rand(2, 5, 4) * 0.2 + 0.4
    for b, t in enumerate(targets):
        for j, (label, box) in enumerate(zip(t["labels"], t["boxes"])):  # ... except one query per target
            logits[b, j + 1] = -8.0
            logits[b, j + 1, label] = 8.0
            boxes[b, j + 1] = box
    losses = SetCriterion(3, HungarianMatcher())({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["bbox"] < 1e-6 and losses["giou"] < 1e-5 and losses["ce"] < 1e-3
    shuffled = SetCriterion(3, HungarianMatcher())({"pred_logits": logits, "pred_boxes": boxes.roll(1, 1)}, targets)
    assert shuffled["loss"] > losses["loss"] + 1.0  # boxes now sit on queries of another class


def test_no_object_weight_scales_the_empty_class():
    logits, boxes = torch.randn(1, 6, 4), torch.rand(1, 6, 4) * 0.3 + 0.3
    targets = random_targets([0])
    low = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    expected = torch.nn.functional.cross_entropy(logits[0], torch.full((6,), 3))  # weighted mean of one class
    torch.testing.assert_close(low["ce"], expected)
    assert low["bbox"] == 0 and low["giou"] == 0


def test_dense_assignment_of_patch_tokens():
    """Token cell centres inside a box are its positives (the smaller box wins where two overlap); a box too
    small to hold a centre still gets the token nearest its centre."""
    from vitkit.models.heads.detection import _cell_boxes
    from vitkit.tasks.detection import _dense_owner

    centres = _cell_boxes((4, 4))[:, :2]  # (16, 2): 0.125, 0.375, 0.625, 0.875 on each axis
    boxes = torch.tensor([[0.25, 0.5, 0.5, 1.0],     # the left half: columns 0-1, all rows
                          [0.25, 0.25, 0.3, 0.3],    # inside it, smaller: rows 0-1, columns 0-1
                          [0.76, 0.76, 0.05, 0.05]])  # holds no centre; the nearest is (0.875, 0.875)
    owner = _dense_owner(centres, boxes).view(4, 4)  # rows = y, columns = x
    assert owner[:2, :2].eq(1).all() and owner[2:, :2].eq(0).all()
    assert owner[3, 3] == 2 and owner[:, 2:].flatten().tolist().count(-1) == 7
    assert _dense_owner(centres, torch.zeros(0, 4)).eq(-1).all()


def test_postprocess_top_k_to_original_pixels():
    logits = torch.tensor([[[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]])  # query 0 class 0, query 1 class 2
    boxes = torch.tensor([[[0.5, 0.25, 0.5, 0.5], [0.9, 0.9, 0.4, 0.4]]])  # canvas-normalised cxcywh
    target = {"scale": (0.5, 0.5), "orig_size": (100, 150)}  # a 150x100 image letterboxed to 75x50 on a 64 canvas
    out = postprocess(logits, boxes, [target], canvas=64, top_k=3)[0]
    assert (out["labels"].tolist() == [0, 2, 1]
            and out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True))
    torch.testing.assert_close(out["boxes"][0], torch.tensor([32.0, 0.0, 96.0, 64.0]))  # (16, 0, 48, 32) / 0.5
    torch.testing.assert_close(out["boxes"][1], torch.tensor([89.6, 89.6, 140.8, 100.0]))  # clamped to the height
    assert len(postprocess(logits, boxes, [target], canvas=64, top_k=3, score_threshold=0.5)[0]["scores"]) == 2


# --------------------------------------------------------------------------- training and COCO evaluation
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DETR trained 60 steps on tiny shapes scenes (some without shapes); its losses per step."""
    root = tmp_path_factory.mktemp("shapes")
    pl.seed_everything(0)
    dm = DetectionDataModule(root=str(root / "shapes"), shapes_config=TINY_SHAPES, img_size=32, batch_size=16)
    # warmup_epochs=7.5: 30 of 60 steps
    task = ObjectDetector("detr_vit_nano_patch8_64", num_classes=4, img_size=32, model_kwargs=TINY_DETR, lr=2e-3,
                          encoder_lr_scale=1.0, weight_decay=0.0, warmup_epochs=7.5, class_names=dm.class_names)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record()], gradient_clip_val=0.1,
                         limit_val_batches=0, default_root_dir=str(root / "runs"))
    trainer.fit(task, datamodule=dm)
    return task, dm, losses, root


def test_short_training_lowers_the_loss(trained):
    _, _, losses, _ = trained
    assert len(losses) == 60 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


def validate(task, dm, folder: Path) -> dict[str, float]:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(folder))
    return trainer.validate(task, datamodule=dm, verbose=False)[0]


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_exported_results_reevaluate_to_the_logged_numbers(trained, tmp_path, backend):
    """coco_results.json of a trained model, with a score threshold that leaves some images without any
    detection, re-evaluated by pycocotools against the ground-truth JSON: the same 12 numbers as logged."""
    task, dm, _, _ = trained
    task.map_backend, task.score_threshold = backend, 0.0
    task.val_map = type(task.val_map)(box_format="xyxy", iou_type="bbox", backend=backend)
    task.eval()
    with torch.no_grad():  # between the two lowest of the images' best scores: the lowest keeps no detection
        best = [float(task.predict_boxes(task(x[None]), [t], 32)[0]["scores"].max()) for x, t in dm.get_dataset("val")]
    low = sorted(set(best))
    task.score_threshold = (low[0] + low[1]) / 2  # not min(best) itself: batched scores differ from these by ~1e-7
    logged = validate(task, dm, tmp_path)
    results = json.loads((tmp_path / "coco_results.json").read_text())
    gt = json.loads(Path(dm.annotation_file("val")).read_text())
    with_dets = {r["image_id"] for r in results}
    assert 0 < len(with_dets) < len(gt["images"]), "some images have detections, some have none"
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}
    assert any(not [a for a in gt["annotations"] if a["image_id"] == im["id"]]
               for im in gt["images"]), "a negative image"
    reevaluated = coco_evaluate(dm.annotation_file("val"), tmp_path / "coco_results.json")
    assert logged["val/map_50"] > 0, "a model that found something"
    for key in COCO_KEYS:
        assert logged[f"val/{key}"] == pytest.approx(reevaluated[key], abs=1e-6), key


def test_empty_prediction_list_evaluates_like_the_metric(trained, tmp_path):
    task, dm, _, _ = trained
    task.score_threshold = 1.0  # nothing passes
    logged = validate(task, dm, tmp_path)
    assert json.loads((tmp_path / "coco_results.json").read_text()) == []
    reevaluated = coco_evaluate(dm.annotation_file("val"), [])  # pycocotools' loadRes would fail on []
    assert reevaluated["map"] == 0.0 and reevaluated["map_50"] == 0.0
    for key in COCO_KEYS:
        assert logged[f"val/{key}"] == pytest.approx(reevaluated[key], abs=1e-6), key


def test_coco_table_reads_like_pycocotools():
    stats = dict(zip(COCO_KEYS, [0.5, 0.75, 0.25, -1, 0.125, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, -1]))
    lines = coco_table(stats).splitlines()
    assert len(lines) == 12
    assert lines[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500"
    assert lines[3].endswith("area= small | maxDets=100 ] = -1.000")
    assert lines[6] == " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.100"


def test_weight_ema_is_used_for_evaluation_and_checkpointed(trained, tmp_path):
    _, dm, _, _ = trained
    task = ObjectDetector(num_classes=4, img_size=32, model_kwargs=TINY_DETR, lr=1e-3, ema_decay=0.9)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=dm)
    live, ema = dict(task.model.named_parameters()), dict(task.ema.module.named_parameters())
    assert not torch.equal(live["head.class_embed.weight"], ema["head.class_embed.weight"])
    x = torch.randn(1, 3, 32, 32)
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(task(x)["pred_logits"], task.ema.module(x)["pred_logits"])
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    restored = ObjectDetector.load_from_checkpoint(tmp_path / "ema.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x)["pred_logits"], task(x)["pred_logits"])
    with pytest.raises(ConfigError, match="ema_decay=1.5"):
        ObjectDetector(model_kwargs=TINY_DETR, ema_decay=1.5)


def test_task_refuses_a_classifier_and_wrong_class_names():
    with pytest.raises(ConfigError, match="is not a detector; expected one of"):
        ObjectDetector("vit_nano_patch4_32", num_classes=3)
    with pytest.raises(ConfigError, match="class_names has 2 names; expected num_classes=4"):
        ObjectDetector(class_names=["a", "b"], model_kwargs=TINY_DETR)


def test_encoder_gets_its_own_learning_rate():
    task = ObjectDetector(model_kwargs=TINY_DETR, lr=1e-3, encoder_lr_scale=0.1, weight_decay=0.05)
    groups = task.param_groups()
    names = {id(p): n for n, p in task.model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            assert g["lr"] == pytest.approx(1e-4 if n.startswith("encoder.") else 1e-3), n
            assert (g["weight_decay"] == 0) == (p.ndim <= 1 or n.endswith(("pos_embed", "cls_token"))), n
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in task.model.parameters())


# --------------------------------------------------------------------------- command line
def cli(sub: str, root: Path, *extra: str) -> None:
    main([sub, "--config", str(ROOT / SHAPES_CONFIG), "--trainer.default_root_dir", str(root / "runs"),
          "--data.init_args.root", str(root / "shapes"), "--data.init_args.shapes_config", json.dumps(TINY_SHAPES),
          "--data.init_args.img_size", "32", "--data.init_args.batch_size", "8",
          "--model.init_args.model_kwargs", json.dumps(TINY_DETR), "--model.init_args.num_draw", "3",
          "--trainer.enable_progress_bar", "false", *extra])


def test_config_fit_test_and_predict_end_to_end(tmp_path, capsys):
    cli("fit", tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.log_every_n_steps", "1", "--test_after_fit", "false")
    run = tmp_path / "runs/shapes_detr_nano/version_0"
    with open(run / "metrics.csv") as f:
        cols = set(csv.DictReader(f).fieldnames)
    assert {"train/loss", "val/loss", "val/map", "val/map_50", "val/map_75", "val/mar_100"} <= cols
    assert not (run / "coco_results.json").exists(), "fit's validation passes write no results file"
    ckpt = run / "checkpoints/last.ckpt"

    cli("test", tmp_path, "--ckpt_path", str(ckpt))
    out = tmp_path / "runs/shapes_detr_nano/version_1"
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]" in printed
    results = json.loads((out / "coco_results.json").read_text())
    test_ids = {im["id"]
                for im in json.loads((tmp_path / "shapes/annotations/instances_test.json").read_text())["images"]}
    assert (results and {r["image_id"] for r in results} <= test_ids
            and {r["category_id"] for r in results} <= {1, 2, 3, 4})
    assert len(list((out / "detections").glob("*.png"))) == 3 and (out / "coco_eval.txt").exists()
    with open(out / "metrics.csv") as f:
        assert {"test/map", "test/map_50", "test/mar_100"} <= set(csv.DictReader(f).fieldnames)

    images = tmp_path / "photos"
    images.mkdir()
    for i, size in enumerate([(32, 32), (50, 40)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            images / f"p{i}.png")
    cli("predict", tmp_path, "--ckpt_path", str(ckpt), "--data.init_args.predict_dir", str(images),
        "--model.init_args.display_threshold", "0.0")
    out = tmp_path / "runs/shapes_detr_nano/version_2"
    rows = json.loads((out / "predictions.json").read_text())
    assert [Path(r["path"]).name for r in rows] == ["p0.png", "p1.png"]
    big = rows[1]["detections"]
    assert big and all(d["label"] in ("circle", "square", "triangle", "star") for d in big)
    assert all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 40.01 and d["bbox"][1] + d["bbox"][3] <= 50.01
               for d in big)
    assert len(list((out / "detections").glob("*.png"))) == 2


def tiny_coco(root: Path) -> Path:
    """A COCO-format val2017 split: 3 images (one without objects), 2 of COCO's non-contiguous categories."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate([(64, 48), (40, 64), (64, 64)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / f"val2017/{i:012d}.jpg")
        images.append({"id": 100 + i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
    anns = [{"id": 1, "image_id": 100, "category_id": 18, "bbox": [4, 4, 20, 16], "area": 320, "iscrowd": 0},
            {"id": 2, "image_id": 101, "category_id": 90, "bbox": [10, 30, 12, 20], "area": 240, "iscrowd": 0}]
    cats = [{"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]
    (root / "annotations/instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_coco_yolos_config_evaluates_a_transformers_checkpoint(tmp_path, capsys):
    """`train.py test --config coco_yolos_s.yaml --model.init_args.pretrained <transformers folder>`, shrunk."""
    from transformers import YolosConfig, YolosForObjectDetection

    coco = tiny_coco(tmp_path / "coco")
    cfg = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      image_size=[64, 96], patch_size=16, num_detection_tokens=6, num_labels=2,
                      use_mid_position_embeddings=True)
    YolosForObjectDetection(cfg).save_pretrained(tmp_path / "yolos")
    main(["test", "--config", str(ROOT / "configs/detection/coco_yolos_s.yaml"),
          "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--data.init_args.root", str(coco), "--data.init_args.img_size", "64", "--data.init_args.num_workers", "0",
          "--model.init_args.model_kwargs",
          '{"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2, "num_det_tokens": 6, "norm_eps": 1e-12}',
          "--model.init_args.pretrained", str(tmp_path / "yolos"), "--trainer.precision", "32",
          "--trainer.enable_progress_bar", "false"])
    out = tmp_path / "runs/coco_yolos_s/version_0"
    results = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} == {100, 101, 102} and {r["category_id"] for r in results} <= {18, 90}
    assert "maxDets=100 ]" in capsys.readouterr().out


def test_coco_detr_config_fits_on_coco_format_data(tmp_path):
    coco = tiny_coco(tmp_path / "coco")
    main(["fit", "--config", str(ROOT / "configs/detection/coco_detr_vit_s.yaml"),
          "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--data.init_args.root", str(coco), "--data.init_args.splits", '{"train": "val2017"}',
          "--data.init_args.img_size", "64",
          "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--model.init_args.model_kwargs",
          json.dumps({**TINY_DETR, "num_queries": 4}), "--trainer.precision", "32", "--trainer.max_epochs", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"])
    with open(tmp_path / "runs/coco_detr_vit_s/version_0/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/map") for r in rows)


def test_the_checkpoint_keeps_the_datasets_category_ids_for_export_and_serving(trained, tmp_path, capsys):
    """The shapes ids start at 1 (COCO's are sparse): a label index is not a category id, so the checkpoint keeps
    them and an exported or served detector answers with the dataset's ids."""
    from PIL import Image

    from vitkit.export import ExportedModel
    from vitkit.export.command import main as export

    task, dm, _, _ = trained
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    task.trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["category_ids"] == dm.category_ids == [1, 2, 3, 4]
    ckpt["hyper_parameters"]["_class_path"] = "vitkit.tasks.ObjectDetector"  # what the CLI records
    torch.save(ckpt, path)
    export(["--ckpt", str(path), "--out", str(tmp_path / "exp")])
    model = ExportedModel(tmp_path / "exp" / "model.onnx")
    assert model.meta["category_ids"] == [1, 2, 3, 4]
    image = Image.open(next(Path(dm.root).rglob("*.png"))).convert("RGB")
    model.meta["display_threshold"] = model.meta["score_threshold"] = 0.0  # every top-k box, for the check
    (row,) = model.predict([image])
    assert row["detections"] and {d["category_id"] for d in row["detections"]} <= {1, 2, 3, 4}
    assert all(dm.class_names[d["category_id"] - 1] == d["label"] for d in row["detections"])

    del ckpt["category_ids"]  # a checkpoint from before: labels only, and the export says so
    torch.save(ckpt, path)
    export(["--ckpt", str(path), "--out", str(tmp_path / "old")])
    assert "records no dataset category ids" in capsys.readouterr().out
    (row,) = ExportedModel(tmp_path / "old" / "model.onnx").predict([image])
    assert all("category_id" not in d for d in row["detections"])
