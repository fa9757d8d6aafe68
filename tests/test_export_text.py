"""`vitkit export` of the text path: a Seq2Seq model and a captioner become an encoder graph and a one-token
decoder step with the KV cache as inputs/outputs, whose greedy loop (`ExportedModel.generate`) decodes the very
tokens the task's own greedy decoding does; VQA is one (pixels, question) graph. The parity check is an error above
tolerance, and the runtime predicts what the task predicts."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from fastapi.testclient import TestClient
from PIL import Image

from vitkit.cli import main
from vitkit.data.text import TextTokenizer
from vitkit.errors import ConfigError
from vitkit.explain.command import load_task
from vitkit.export import ExportedModel, ExportError
from vitkit.export.command import main as export
from vitkit.serve import create_app, load_predictor
from vitkit.tasks import ImageCaptioner

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "-1", "--test_after_fit", "false",
         "--trainer.limit_val_batches", "1", "--model.init_args.lr", "3e-3", "--model.init_args.warmup_steps", "10"]


def last_ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def numbers(tmp_path_factory) -> Path:
    """A tiny number-words -> digits translator after 80 steps (it already ends its outputs with EOS)."""
    tmp = tmp_path_factory.mktemp("numbers")
    main(["fit", "--config", str(ROOT / "configs/seq2seq/numbers_tiny.yaml"), "--trainer.default_root_dir",
          str(tmp / "runs"), "--data.init_args.root", str(tmp / "data"), "--data.init_args.num_train", "600",
          "--data.init_args.batch_size", "32", "--model.init_args.model_kwargs",
          '{"dim": 32, "enc_depth": 1, "dec_depth": 2, "num_heads": 2, "dropout": 0.0}', "--trainer.max_steps", "80",
          "--trainer.val_check_interval", "80", *QUIET])
    return last_ckpt(tmp / "runs" / "numbers_tiny" / "version_0")


def shape_args(root: Path) -> list[str]:
    """The embedded shapes scenes (captions and questions), a small set made in `root`, and a tiny encoder."""
    return ["--data.init_args.root", str(root), "--data.init_args.shapes",
            '{"num_train": 24, "num_val": 8, "num_test": 8}', "--model.init_args.encoder_kwargs",
            '{"depth": 1, "patch_size": 8, "embed_dim": 32, "num_heads": 2}', "--data.init_args.img_size", "32",
            "--data.init_args.batch_size", "8"]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cap")
    main(["fit", "--config", str(ROOT / "configs/captioning/shapes_captions.yaml"), "--trainer.default_root_dir",
          str(tmp), *shape_args(tmp / "shapes"), "--model.init_args.decoder_kwargs",
          '{"dim": 32, "depth": 1, "num_heads": 2, "dropout": 0.0}', "--trainer.max_steps", "30", *QUIET])
    return last_ckpt(tmp / "shapes_captions" / "version_0")


@pytest.fixture(scope="module")
def answerer(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vqa")
    main(["fit", "--config", str(ROOT / "configs/vqa/shapes_vqa.yaml"), "--trainer.default_root_dir", str(tmp),
          *shape_args(tmp / "shapes"), "--model.init_args.fusion_kwargs",
          '{"dim": 32, "depth": 1, "num_heads": 2, "dropout": 0.0}', "--model.init_args.pretrained", "null",
          "--trainer.max_steps", "10", *QUIET])
    return last_ckpt(tmp / "shapes_vqa" / "version_0")


def meta_of(out: Path, stem: str = "model") -> dict:
    return json.loads((out / f"{stem}.json").read_text())


@pytest.mark.parametrize("fmt,stem,suffix", [("onnx", "model", "onnx"), ("exported-program", "program", "pt2")])
def test_seq2seq_exports_an_encoder_and_a_cached_decoder_step_that_decode_the_tasks_tokens(numbers, tmp_path, fmt,
                                                                                          stem, suffix, capsys):
    out = tmp_path / "exp"
    export(["--ckpt", str(numbers), "--format", fmt, "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {f"{stem}.encoder.{suffix}", f"{stem}.decoder.{suffix}",
                                               f"{stem}.json", "tokenizer.json"}
    meta = meta_of(out, stem)
    assert meta["task"] == "seq2seq" and meta["graphs"]["decoder"]["inputs"][:4] == ["token", "pos", "memory_mask",
                                                                                     "self_k.0"]
    assert meta["graphs"]["decoder"]["outputs"] == ["logits", "new_self_k.0", "new_self_k.1", "new_self_v.0",
                                                    "new_self_v.1"]  # the 2-layer decoder's caches, layer by layer
    tokens = [r for r in meta["parity"] if r["output"] == "tokens"]
    assert [r["input"] for r in tokens] == ["2x8", "3x13"] and all(r["identical"] for r in tokens)
    assert all(r["max_abs_diff"] < 1e-4 for r in meta["parity"] if r["output"] == "logits")
    assert "greedy tokens" in capsys.readouterr().out

    model = ExportedModel(out / f"{stem}.json")
    task, _ = load_task(str(numbers))
    texts = ["three hundred and twelve", "", "seven", "65113", "ninety-nine"]
    assert model.predict(texts) == [{"source": t, "output": o} for t, o in zip(texts, task.translate(texts))]
    ids, logits = model.generate(model.encode_texts([texts[0], *texts[2:]], 32, "text"))
    eos = meta["decoder"]["eos_id"]
    ends = [row.index(eos) for row in ids.tolist() if eos in row]
    assert len(set(ends)) > 1  # rows stop at different steps (then decode padding): the loop's bookkeeping is tested
    assert logits.shape == (*ids.shape, task.hparams.vocab_size)


def test_captioner_exports_with_dynamic_image_size_and_captions_as_the_task_does(captioner, tmp_path):
    out = tmp_path / "exp"
    export(["--ckpt", str(captioner), "--out", str(out), "--dynamic", "batch,size"])
    meta = meta_of(out)
    assert meta["task"] == "captioning" and meta["image_size"] == [32, 32]
    assert {r["input"] for r in meta["parity"]} == {"2x3x32x32", "3x3x40x48"}
    assert all(r["identical"] for r in meta["parity"] if r["output"] == "tokens")
    model = ExportedModel(out / "model.decoder.onnx")  # any of its files finds the rest
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)) for _ in range(3)]
    task, _ = load_task(str(captioner))
    want = task.caption(torch.from_numpy(model.preprocess(pics)))
    assert [r["caption"] for r in model.predict(pics)] == want


def test_vqa_exports_one_graph_of_image_and_question(answerer, tmp_path):
    out = tmp_path / "exp"
    export(["--ckpt", str(answerer), "--out", str(out), "--dynamic", "batch,size"])
    meta = meta_of(out)
    assert meta["graphs"]["model"]["inputs"] == ["pixels", "question"]
    assert all(r["max_abs_diff"] < 1e-4 for r in meta["parity"])
    model = ExportedModel(out / "model.onnx")
    task, _ = load_task(str(answerer))
    rng = np.random.default_rng(1)
    pics = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    questions = ["what color is the circle?", "how many shapes are there?"]
    got = model.predict(pics, questions)
    q = torch.from_numpy(model.encode_texts(questions, meta["max_len"], "question"))
    want = task.predict_step({"images": torch.from_numpy(model.preprocess(pics)), "question": q,
                              "path": ["a", "b"], "question_text": questions}, 0)
    assert [g["answer"] for g in got] == [w["answer"] for w in want]
    np.testing.assert_allclose([g["prob"] for g in got], [w["prob"] for w in want], atol=1e-5)
    with pytest.raises(ConfigError, match="one question per image"):
        model.predict(pics)


def test_parity_above_tolerance_is_an_error_and_text_has_no_image_size(numbers, tmp_path):
    with pytest.raises(ExportError, match=r"differ from the eager model above --atol 1e-12 \(logits at 2x8"):
        export(["--ckpt", str(numbers), "--out", str(tmp_path / "strict"), "--atol", "1e-12"])
    with pytest.raises(ConfigError, match="takes no image"):
        export(["--ckpt", str(numbers), "--out", str(tmp_path / "size"), "--dynamic", "batch,size"])


def png(seed: int, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_serve_translates_text_from_the_checkpoint_and_from_the_export(numbers, tmp_path):
    export(["--ckpt", str(numbers), "--out", str(tmp_path)])
    task, _ = load_task(str(numbers))
    want = task.translate(["seven hundred and two"])[0]
    for served in (numbers, tmp_path / "model.json"):
        with TestClient(create_app(load_predictor(str(served)), batch_timeout_ms=1)) as client:
            assert client.get("/health").json()["inputs"] == "text"
            r = client.post("/predict", json={"text": "seven hundred and two"})
            assert r.status_code == 200 and r.json()["output"] == want
            plain = client.post("/predict", content=b"seven hundred and two", headers={"content-type": "text/plain"})
            assert plain.json()["output"] == want
            assert client.post("/predict", json={"words": "x"}).status_code == 422
            assert client.post("/predict", files={"file": ("a.png", png(0), "image/png")}).status_code == 422
            too_long = client.post("/predict", json={"text": "seven " * 100})
            assert too_long.status_code == 422 and "at most 48" in too_long.text


def test_serve_captions_and_answers_questions(captioner, answerer, tmp_path):
    export(["--ckpt", str(captioner), "--out", str(tmp_path / "cap")])
    task, _ = load_task(str(captioner))
    runtime = ExportedModel(tmp_path / "cap" / "model.json")
    want = task.caption(torch.from_numpy(runtime.preprocess([Image.open(io.BytesIO(png(1)))])))[0]
    for served in (captioner, tmp_path / "cap" / "model.json"):
        with TestClient(create_app(load_predictor(str(served)), batch_timeout_ms=1)) as client:
            r = client.post("/predict", files={"file": ("s.png", png(1), "image/png")})
        assert r.status_code == 200 and r.json() == {"path": "s.png", "caption": want}
    with TestClient(create_app(load_predictor(str(answerer)), batch_timeout_ms=1)) as client:
        r = client.post("/predict", files={"file": ("s.png", png(2), "image/png")},
                        data={"question": "what color is the square?"})
        assert r.status_code == 200 and r.json()["question"] == "what color is the square?"
        assert 0 < r.json()["prob"] <= 1
        missing = client.post("/predict", files={"file": ("s.png", png(2), "image/png")})
        assert missing.status_code == 422 and "question" in missing.text
        latin1 = client.post("/predict", files={"file": ("s.png", png(2), "image/png"),
                                                "question": (None, "où est le carré ?".encode("latin-1"))})
        assert latin1.status_code == 400 and "field 'question' is not UTF-8" in latin1.text


def test_a_captioner_on_a_timm_encoder_exports(tmp_path):
    """Sizes read from the encoder's patch embedding, which vitkit's and timm's ViTs both have."""
    tok = TextTokenizer.train(["a red circle left of a blue square"] * 10, vocab_size=300)
    torch.manual_seed(0)
    task = ImageCaptioner(encoder="timm:vit_tiny_patch16_224", img_size=32, max_len=10,
                          encoder_kwargs={"depth": 1, "patch_size": 8},
                          decoder_kwargs={"dim": 32, "depth": 1, "num_heads": 2}, vocab_size=tok.vocab_size,
                          pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    hparams = {**task.hparams, "_class_path": "vitkit.tasks.ImageCaptioner"}
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": hparams, "tokenizer": tok.state(),
                "pytorch-lightning_version": pl.__version__}, path)
    export(["--ckpt", str(path)])
    meta = meta_of(tmp_path / "run" / "export")
    assert meta["image_size"] == [32, 32] and meta["patch_size"] == [8, 8]
    assert all(r["identical"] for r in meta["parity"] if r["output"] == "tokens")
