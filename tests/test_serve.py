"""`vitkit serve` as a client meets it: a real uvicorn server on a free localhost port answers /predict with the
rows `predict` writes (same preprocessing as the data module), batches concurrent requests without changing the
answers, and refuses bad uploads with a clear 4xx."""
from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from vitkit.cli import main as cli_main
from vitkit.data import ClassificationDataModule
from vitkit.serve import Upload, create_app, load_predictor
from vitkit.tasks import ImageClassifier, ObjectDetector, SemanticSegmenter

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
LIMIT_MB = 0.05  # the test server's --max-upload-mb (51 200 bytes)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny digits classifier after a few optimiser steps, saved as a Lightning checkpoint."""
    tmp = tmp_path_factory.mktemp("serve")
    pl.seed_everything(0)
    task = ImageClassifier(model="vit_tiny_patch4_32", img_size=16, model_kwargs=TINY, warmup_epochs=0)
    dm = ClassificationDataModule(img_size=16, batch_size=32)
    trainer = pl.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
    trainer.fit(task, datamodule=dm)
    path = tmp / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory, write_digit_pngs) -> Path:
    """Four real digits as 24x24 PNGs (not the model's 16: preprocessing resizes, as predict does)."""
    return write_digit_pngs(tmp_path_factory.mktemp("digits"), 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ckpt):
    """The app on a real uvicorn server in a background thread; yields its base URL."""
    app = create_app(load_predictor(str(ckpt)), max_batch=4, batch_timeout_ms=150, max_upload_mb=LIMIT_MB)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def _expected_rows(ckpt: Path, images: Path) -> dict[str, dict]:
    """What `predict` gives: the task's predict_step on the data module's own predict batches of the folder."""
    task = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    dm = ClassificationDataModule(img_size=16, predict_dir=str(images))
    dm.setup("predict")
    with pl.utilities.seed.isolate_rng():
        rows = [row for batch in dm.predict_dataloader() for row in task.predict_step(batch, 0)]
    return {Path(r["path"]).name: r for r in rows}


def _close(row: dict, expected: dict) -> bool:
    return row["labels"] == expected["labels"] and np.allclose(row["probs"], expected["probs"], atol=1e-5)


def test_a_png_upload_gets_the_predict_row_of_that_image(server, ckpt, images):
    expected = _expected_rows(ckpt, images)
    for name in expected:
        data = (images / name).read_bytes()
        upload = httpx.post(f"{server}/predict", files={"file": (name, data, "image/png")}, timeout=30)
        raw = httpx.post(f"{server}/predict", params={"filename": name}, content=data,
                         headers={"content-type": "image/png"}, timeout=30)
        for r in (upload, raw):
            assert r.status_code == 200, r.text
            assert r.json()["path"] == name and _close(r.json(), expected[name])
        assert len(upload.json()["labels"]) == 5 and set(upload.json()["labels"]) <= {str(d) for d in range(10)}


def test_health_names_the_task_model_and_format(server):
    r = httpx.get(f"{server}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["task"] == "classification"
    assert body["model"] == "vit_tiny_patch4_32" and body["format"] == "torch" and body["max_batch"] == 4


def test_concurrent_requests_are_batched_and_answered_as_one_at_a_time(server, images):
    files = sorted(images.glob("*.png"))
    single = {}
    for path in files:
        single[path.name] = httpx.post(f"{server}/predict", files={"file": (path.name, path.read_bytes())}).json()
    before = httpx.get(f"{server}/health").json()

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            sends = [client.post("/predict", files={"file": (p.name, p.read_bytes())}) for p in files]
            return [r.json() for r in await asyncio.gather(*sends)]

    together = asyncio.run(burst())
    after = httpx.get(f"{server}/health").json()
    assert [r["path"] for r in together] == [p.name for p in files]
    assert all(_close(r, single[r["path"]]) for r in together)
    new = {int(n): c - before["batches"].get(n, 0) for n, c in after["batches"].items()}
    assert after["requests"] - before["requests"] == len(files)
    assert any(n >= 2 and c > 0 for n, c in new.items()), new  # at least two requests shared one forward


def test_a_text_file_is_refused_naming_it(server):
    r = httpx.post(f"{server}/predict", files={"file": ("notes.txt", b"hello, not a picture", "text/plain")})
    assert r.status_code == 415
    assert "notes.txt" in r.json()["detail"] and "expected a PNG" in r.json()["detail"]
    assert "sent as text/plain" in r.json()["detail"]
    raw = httpx.post(f"{server}/predict", content=b"a=1", headers={"content-type": "application/json"})
    assert raw.status_code == 415 and "application/json" in raw.json()["detail"]


def test_empty_body_and_empty_file_are_400_and_missing_field_422(server):
    r = httpx.post(f"{server}/predict", content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = httpx.post(f"{server}/predict", files={"file": ("blank.png", b"", "image/png")})
    assert r.status_code == 400 and "blank.png" in r.json()["detail"]
    r = httpx.post(f"{server}/predict", files={"image": ("d.png", b"\x89PNG", "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"] and "'image'" in r.json()["detail"]


def test_an_over_large_upload_is_413_declared_or_streamed(server):
    big = bytes(int(LIMIT_MB * 2**20) + 1)
    r = httpx.post(f"{server}/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "at most 52428" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is checked while reading
        for _ in range(100):
            yield bytes(4096)

    r = httpx.post(f"{server}/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_an_image_of_another_mode_and_format_is_decoded_as_files_are(server, images):
    gray = Image.open(images / "d0.png").convert("L")
    buf = io.BytesIO()
    gray.convert("RGBA").save(buf, format="WEBP", lossless=True)
    r = httpx.post(f"{server}/predict", files={"file": ("d0.webp", buf.getvalue(), "image/webp")})
    png = httpx.post(f"{server}/predict", files={"file": ("d0.png", (images / "d0.png").read_bytes())})
    assert r.status_code == 200 and _close(r.json(), png.json())


def test_bad_command_lines_end_in_one_message(ckpt, tmp_path, capsys):
    fixed = tmp_path / "fixed"
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(fixed), "--dynamic", "none"])
    for argv, words in ((["--ckpt", str(tmp_path / "none.ckpt")], "file not found"),
                        (["--ckpt", str(ckpt), "--max-batch", "0"], "--max-batch: found 0"),
                        (["--ckpt", str(fixed / "model.onnx")], "exported with a fixed batch size"),
                        (["--ckpt", str(fixed / "model.onnx"), "--device", "cuda"], "exported models run on the CPU")):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["serve", *argv])
        assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_an_exported_model_is_served_through_its_runtime(ckpt, images, tmp_path):
    runtime = pytest.importorskip("vitkit.export.runtime")
    cli_main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path), "--dynamic", "batch"])
    onnx = tmp_path / "model.onnx"
    predictor = load_predictor(str(onnx))
    assert predictor.format == "onnx" and predictor.task == runtime.ExportedModel(onnx).meta["task"]
    expected = _expected_rows(ckpt, images)
    rgb = np.asarray(Image.open(images / "d1.png").convert("RGB"))
    prepared = predictor.prepare(Upload("d1.png", image=rgb))
    rows = predictor.predict([prepared] * 3, ["a.png", "b.png", "d1.png"])  # a batch of 3
    assert [r["path"] for r in rows] == ["a.png", "b.png", "d1.png"] and _close(rows[2], expected["d1.png"])
    with TestClient(create_app(predictor, batch_timeout_ms=1)) as client:  # the same app over the exported file
        assert client.get("/health").json()["format"] == "onnx"
        r = client.post("/predict", files={"file": ("d1.png", (images / "d1.png").read_bytes(), "image/png")})
        assert r.status_code == 200 and _close(r.json(), expected["d1.png"])


def _save_raw(task: pl.LightningModule, path: Path) -> Path:
    """A Lightning-format checkpoint of an untrained task (what `vitkit export` reads), without a fit."""
    hparams = {**task.hparams, "_class_path": f"{type(task).__module__}.{type(task).__name__}"}
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__,
                "datamodule_hyper_parameters": {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}}, path)
    return path


def _segmenter() -> SemanticSegmenter:
    return SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=3, img_size=32, class_names=["bg", "a", "b"],
                             model_kwargs={"encoder_kwargs": TINY, "head_kwargs": {"depth": 1}})


def _detector() -> ObjectDetector:
    kwargs = {**TINY, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "num_queries": 4}
    return ObjectDetector("detr_vit_nano_patch8_64", num_classes=2, img_size=32, model_kwargs=kwargs,
                          display_threshold=0.0)


@pytest.mark.parametrize("build", [_segmenter, _detector], ids=["segmentation", "detection"])
def test_segmenters_and_detectors_answer_the_same_rows_from_checkpoint_onnx_and_program(build, tmp_path):
    ckpt = _save_raw(build(), tmp_path / "task.ckpt")
    for fmt in ("onnx", "exported-program"):
        cli_main(["export", "--ckpt", str(ckpt), "--format", fmt, "--out", str(tmp_path), "--dynamic", "batch"])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(buf, format="PNG")
    answers = {}
    for served in (ckpt, tmp_path / "model.onnx", tmp_path / "program.pt2"):
        with TestClient(create_app(load_predictor(str(served)), batch_timeout_ms=1)) as client:
            health = client.get("/health").json()
            r = client.post("/predict", files={"file": ("scene.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and r.json()["path"] == "scene.png"
        answers[health["format"]] = r.json()
    assert set(answers) == {"torch", "onnx", "exported-program"}
    task, r = health["task"], answers["torch"]
    if task == "segmentation":
        masks = [np.asarray(a["mask"]) for a in answers.values()]
        assert all((m == masks[0]).mean() > 0.999 for m in masks)  # float ties aside, one mask
    else:
        first = answers["torch"]["detections"]
        for a in answers.values():  # the same boxes, in the same order, with the same labels
            assert [d["label"] for d in a["detections"]] == [d["label"] for d in first]
            np.testing.assert_allclose([d["score"] for d in a["detections"]], [d["score"] for d in first], atol=1e-4)
            np.testing.assert_allclose([d["bbox"] for d in a["detections"]], [d["bbox"] for d in first], atol=1e-2)
    if task == "segmentation":  # a class per pixel of the uploaded 28x20 image
        assert np.asarray(r["mask"]).shape == (20, 28)
        assert abs(sum(r["fractions"].values()) - 1) < 1e-4
    else:  # boxes in the uploaded image's pixels
        assert task == "detection" and r["detections"]
        assert all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 28.01 for d in r["detections"])
