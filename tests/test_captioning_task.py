"""Captioning and VQA: the models reuse vitkit's ViT and blocks, decoding with the KV cache equals decoding
without it, question padding changes nothing, the COCO-captions / VQA readers and their errors, the
metrics, and the data modules on a small shapes set written in the standard formats."""
from __future__ import annotations

import json
import re

import pytest
import torch

import vitkit
from vitkit.data.captioning import CaptioningDataModule, VQADataModule, normalize_answer, read_captions, read_vqa
from vitkit.data.shapes import ShapesConfig, generate_shapes
from vitkit.errors import ConfigError, DataError, DatasetNotFoundError
from vitkit.models import CaptionTransformer, VQATransformer
from vitkit.nn import Attention, DecoderBlock, EncoderBlock
from vitkit.tasks.text import answer_type, caption_scores, caption_words, vqa_score

ENC = dict(encoder="vit_nano_patch4_32", img_size=32, encoder_kwargs={"depth": 1, "patch_size": 8, "embed_dim": 32,
                                                                     "num_heads": 2})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small shapes set: 24 training scenes, 8 validation, 8 test, in the standard file formats."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(num_train=24, num_val=8, num_test=8))


def files(root, prefix: str) -> dict:
    return {f"{s}_json": str(root / "annotations" / f"{prefix}_{s}.json") for s in ("train", "val", "test")} | \
           {f"{s}_images": str(root / s / "images") for s in ("train", "val", "test")}


# --------------------------------------------------------------------------- models
def test_captioner_and_vqa_are_built_from_the_shared_vit_and_blocks():
    cap = CaptionTransformer(vocab_size=50, dim=32, depth=1, num_heads=2, **ENC)
    vqa = VQATransformer(vocab_size=50, num_answers=7, dim=32, depth=1, num_heads=2, **ENC)
    assert type(cap.encoder) is vitkit.VisionTransformer and type(vqa.encoder) is vitkit.VisionTransformer
    assert type(cap.encoder.blocks[0]) is EncoderBlock and type(cap.decoder.blocks[0]) is DecoderBlock
    assert all(type(b) is EncoderBlock for b in vqa.blocks)  # single stream over question and image
    cross = VQATransformer(vocab_size=50, num_answers=7, dim=32, depth=1, num_heads=2, fusion="cross", **ENC)
    assert all(type(b) is DecoderBlock for b in cross.blocks)  # the question cross-attends the image
    attn = [m for model in (cap, vqa) for m in model.modules() if re.search("attn|attention", type(m).__name__.lower())]
    assert attn and all(type(m) is Attention for m in attn)
    assert cap.decoder.blocks[0].cross_attn.kv.in_features == cap.encoder.embed_dim == 32  # memory of the ViT's width


@pytest.mark.parametrize("beam_size", [1, 3])
def test_captioner_kv_cache_decoding_gives_exactly_the_uncached_tokens(beam_size):
    torch.manual_seed(0)
    model = CaptionTransformer(vocab_size=40, dim=32, depth=2, num_heads=2, max_len=12, dropout=0.0, **ENC)
    model = model.double().eval()
    with torch.no_grad():  # fresh weights just repeat the input token (tied embedding): let the blocks speak louder
        for m in model.decoder.blocks.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(std=0.5)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    cached = model.generate(images, beam_size=beam_size, min_new_tokens=2)
    full = model.generate(images, beam_size=beam_size, min_new_tokens=2, use_cache=False)
    assert cached.shape[0] == 3 and torch.equal(cached, full)
    assert len(set(map(tuple, cached.tolist()))) > 1, "different images give different captions"


@pytest.mark.parametrize("fusion", ["cross", "joint"])
def test_vqa_question_padding_changes_nothing_and_question_and_image_both_matter(fusion):
    model = VQATransformer(vocab_size=50, num_answers=7, dim=32, depth=2, num_heads=2, dropout=0.0, fusion=fusion,
                           **ENC).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        alone = model(images, torch.tensor([[5, 6, 7]]))
        padded = model(images, torch.tensor([[5, 6, 7, 0, 0]]))
        other = model(images, torch.tensor([[5, 9, 7]]))
        other_image = model(torch.randn(1, 3, 32, 32), torch.tensor([[5, 6, 7]]))
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, other, atol=1e-4)  # the question does matter
    assert not torch.allclose(alone, other_image, atol=1e-4)  # and so does the image
    with pytest.raises(ValueError, match="fusion='late'"):
        VQATransformer(vocab_size=50, num_answers=7, dim=32, depth=1, num_heads=2, fusion="late", **ENC)


def test_an_encoder_that_is_not_an_image_encoder_is_refused():
    with pytest.raises(ValueError, match="unknown model 'vit_nonexistent'"):
        CaptionTransformer(vocab_size=10, encoder="vit_nonexistent")


# --------------------------------------------------------------------------- metrics
def test_caption_scores_reward_the_right_caption():
    refs = {1: ["a red circle and a blue star.", "a picture of a red circle and a blue star."],
            2: ["a green square.", "one shape: a green square."]}
    perfect = caption_scores({1: "A red circle and a blue star", 2: "a green square."}, refs)
    wrong = caption_scores({1: "a blue circle and a red star.", 2: "a yellow triangle."}, refs)
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["cider"] > wrong["cider"]
    assert wrong["bleu4"] < 0.5
    assert caption_words("Two shapes: a Red star, and a blue circle.") == "two shapes a red star and a blue circle"


def test_vqa_accuracy_and_answer_normalisation():
    assert normalize_answer("The Red.") == "red" and normalize_answer("a circle") == "circle"
    assert vqa_score("two", ["two"]) == 1.0 and vqa_score("three", ["two"]) == 0.0
    assert vqa_score("two", ["two", "two", "three", "two"]) == 1.0  # three people agree
    assert vqa_score("three", ["two", "two", "three", "two"]) == pytest.approx(1 / 3)
    assert answer_type(["yes"]) == "yes_no" and answer_type(["no", "no", "yes"]) == "yes_no"
    assert answer_type(["two"]) == "number" and answer_type(["12"]) == "number"
    assert answer_type(["red", "red", "two"]) == "other" and answer_type([]) == "other"


# --------------------------------------------------------------------------- readers
def test_shapes_files_read_as_coco_captions_and_vqa(shapes):
    items, without = read_captions(shapes / "annotations/captions_train.json", shapes / "train/images")
    assert len(items) == 24 and without == 0 and all(len(it.captions) == 3 for it in items)
    questions = read_vqa(shapes / "annotations/vqa_train.json", shapes / "train/images")
    assert len(questions) >= 24 and all(q.answers and q.question.endswith("?") for q in questions)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"images": [{"id": 1, "file_name": "00000.png"}]}, "expected a COCO captions object"),
        ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] has no 'id' or 'file_name'"),
        ({"images": [{"id": 1, "file_name": "00000.png"}], "annotations": [{"image_id": 7, "caption": "x"}]},
         r"annotations\[0\]: image_id 7 is not among the file's images"),
        ({"images": [{"id": 1, "file_name": "00000.png"}], "annotations": [{"image_id": 1, "caption": " "}]},
         r"annotations\[0\] \(image_id 1\): empty caption"),
        ({"images": [{"id": 1, "file_name": "missing.png"}], "annotations": [{"image_id": 1, "caption": "x"}]},
         r"1 image file\(s\) it names do not exist: .*missing.png"),
    ],
)
def test_bad_caption_files_name_the_entry(shapes, tmp_path, payload, message):
    (tmp_path / "caps.json").write_text(json.dumps(payload))
    with pytest.raises((DataError, DatasetNotFoundError), match=message):
        read_captions(tmp_path / "caps.json", shapes / "train/images")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"file_name": "00000.png"}, "expected a JSON list"),
        ([{"file_name": "00000.png", "question": "what?"}], r"entry 0: no answer \(or answers\)"),
        ([{"file_name": "00000.png", "question": " ", "answer": "red"}], "entry 0: empty question"),
        ([{"question": "what?", "answer": "red"}], "entry 0: no file_name"),
    ],
)
def test_bad_vqa_files_name_the_entry(shapes, tmp_path, payload, message):
    (tmp_path / "vqa.json").write_text(json.dumps(payload))
    with pytest.raises(DataError, match=message):
        read_vqa(tmp_path / "vqa.json", shapes / "train/images")


def test_the_shared_shapes_folder_is_not_regenerated_with_other_settings():
    with pytest.raises(ConfigError, match="shared with segmentation and detection"):
        CaptioningDataModule(root="datasets/shapes", shapes_num_train=5000)


# --------------------------------------------------------------------------- data modules
def test_captioning_batches(shapes):
    dm = CaptioningDataModule(**files(shapes, "captions"), img_size=32, batch_size=8, vocab_size=300, max_len=40)
    train = next(iter(dm.train_dataloader()))
    assert train["images"].shape == (8, 3, 32, 32) and train["tgt"].shape[0] == 8
    assert bool((train["tgt"][:, 0] == dm.tokenizer.bos_id).all())
    assert len(dm.get_dataset("train")) == 24 * 3  # one item per reference caption
    val = next(iter(dm.val_dataloader()))
    assert len(val["refs"]) == 8 and all(len(r) == 3 for r in val["refs"])
    assert dm.tokenizer.decode(val["tgt"][0].tolist()) == val["refs"][0][0]


def test_vqa_answers_are_classes_from_the_training_split(shapes):
    dm = VQADataModule(**files(shapes, "vqa"), img_size=32, batch_size=8, vocab_size=300)
    answers = [a for q in dm._split_items("train") for a in q.answers]
    assert dm.num_classes == len(set(answers)) and dm.class_names[0] == max(set(answers), key=answers.count)
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape == (8, 3, 32, 32) and batch["question"].shape[0] == 8
    known = batch["label"] >= 0
    assert all(dm.class_names[label] == a[0] for label, a in zip(batch["label"][known].tolist(),
                                                                 [a for a, k in zip(batch["answers"], known) if k]))
    assert all(a[0] not in dm.class_names for a, k in zip(batch["answers"], known) if not k)
