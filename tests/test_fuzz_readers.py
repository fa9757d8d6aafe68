"""Every file reader vitkit has, fed random bytes, truncated copies of a valid file and empty files: each case
ends in one of vitkit's errors naming the file (a truncated copy may also still read), never another
exception, a hang or a crash of the interpreter. The cases run in a child process (`python <this file> <dir>`)
so that a crash or a hang is caught as such."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 20


# --------------------------------------------------------------------------------------- valid samples
def _png(mode: str = "RGB") -> bytes:
    import numpy as np
    from PIL import Image

    shape = (12, 10) if mode == "L" else (12, 10, 3)
    buf = io.BytesIO()
    Image.fromarray(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) % 3, mode=mode).save(buf, "PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _safetensors() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"head.weight": torch.zeros(2, 3)})


def _tokenizer(work: Path) -> bytes:
    from vitkit.data import TextTokenizer

    tok = TextTokenizer.train(["one two three", "four five six"] * 20, vocab_size=60, min_frequency=1)
    return tok.save(work / "tok_valid.json").read_bytes()


def _idx(images: bool) -> bytes:
    import numpy as np

    if images:
        return (np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([4, 28, 28], ">i4").tobytes()
                + np.zeros(4 * 28 * 28, np.uint8).tobytes())
    return (np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([4], ">i4").tobytes()
            + np.arange(4, dtype=np.uint8).tobytes())


COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 12}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "thing"}]}
CAPTIONS = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "a thing"}]}
VQA = [{"file_name": "a.png", "question": "what is it?", "answer": "a thing"}]
VOC_XML = ("<annotation><filename>a.png</filename><size><width>10</width><height>12</height></size>"
           "<object><name>thing</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
           "</annotation>")


# --------------------------------------------------------------------------------------------- readers
def readers(work: Path) -> dict[str, tuple[str, bytes, Callable[[str], object]]]:
    """name -> (file name, a valid file's bytes, read(path)); the file is written into `work/<name>/`."""
    from vitkit.data import (
        ClassificationDataModule,
        TextTokenizer,
        load_mask,
        load_rgb,
        read_captions,
        read_pairs,
        read_vqa,
    )
    from vitkit.data.detection import read_coco, read_voc
    from vitkit.data.segmentation import read_class_names
    from vitkit.faults import load_checkpoint
    from vitkit.weights import load_checkpoint_file

    def beside(path: str) -> str:  # the folder of the fuzzed file, holding its companion files
        return os.path.dirname(path)

    def voc_annotation(path: str):
        root = Path(path).parents[1]
        return read_voc(str(root), str(root / "ImageSets/Main/train.txt"), ["thing"])

    def voc_split(path: str):
        return read_voc(str(Path(path).parents[2]), path, ["thing"])

    def mnist(path: str):
        return ClassificationDataModule(dataset="mnist", root=str(Path(path).parents[2])).get_dataset("train")

    return {
        "image_png": ("x.png", _png(), load_rgb),
        "image_jpeg": ("x.jpg", _jpeg(), load_rgb),
        "mask_png": ("m.png", _png("L"), load_mask),
        "coco_json": ("instances.json", json.dumps(COCO).encode(), lambda p: read_coco(p, beside(p), [1])),
        "voc_annotation_xml": ("Annotations/a.xml", VOC_XML.encode(), voc_annotation),
        "voc_split_txt": ("ImageSets/Main/train.txt", b"a\n", voc_split),
        "text_tsv": ("pairs.tsv", b"one two\tuno dos\nthree\ttres\n", read_pairs),
        "text_jsonl": ("pairs.jsonl", b'{"source": "one", "target": "uno"}\n{"source": "two", "target": "dos"}\n',
                       read_pairs),
        "tokenizer_json": ("tokenizer.json", _tokenizer(work), TextTokenizer.from_file),
        "captions_json": ("captions.json", json.dumps(CAPTIONS).encode(), lambda p: read_captions(p, beside(p))),
        "vqa_json": ("vqa.json", json.dumps(VQA).encode(), lambda p: read_vqa(p, beside(p))),
        "class_names_txt": ("classes.txt", b"background\nthing\n", read_class_names),
        "weights_pth": ("w.pth", _torch_bytes({"head.weight": __import__("torch").zeros(2, 3)}), load_checkpoint_file),
        "weights_safetensors": ("w.safetensors", _safetensors(), load_checkpoint_file),
        "checkpoint_ckpt": ("last.ckpt", _torch_bytes({"state_dict": {}, "global_step": 1}), load_checkpoint),
        "mnist_idx": ("MNIST/raw/train-images-idx3-ubyte", _idx(True), mnist),
    }


def companions(folder: Path, name: str) -> None:
    """The other files a reader needs next to the fuzzed one (valid, so that only the fuzzed file is at fault)."""
    (folder / "a.png").write_bytes(_png())
    if name.startswith("voc"):
        (folder / "JPEGImages").mkdir(exist_ok=True)
        (folder / "JPEGImages/a.png").write_bytes(_png())
        (folder / "Annotations").mkdir(exist_ok=True)
        (folder / "Annotations/a.xml").write_text(VOC_XML)
        (folder / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets/Main/train.txt").write_text("a\n")
    if name == "mnist_idx":
        raw = folder / "MNIST/raw"
        raw.mkdir(parents=True, exist_ok=True)
        for prefix in ("train", "t10k"):
            (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(True))
            (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(False))


def cases(valid: bytes) -> list[tuple[str, bytes]]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = [("empty", b"")]
    out += [(f"random-{n}", rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for n in (1, 7, 64, 1000, 20000)]
    cuts = sorted({1, len(valid) // 10, len(valid) // 2, len(valid) * 9 // 10, len(valid) - 1} - {0, len(valid)})
    out += [(f"truncated-{c}", valid[:c]) for c in cuts]
    return out


def _alarm(signum, frame):
    raise TimeoutError(f"no answer within {CASE_TIMEOUT_S} s")


def run_all(work: Path) -> list[dict]:
    """Every reader on every case; one JSON line per case on stdout, printed before and after it runs."""
    from vitkit.errors import VitkitError

    signal.signal(signal.SIGALRM, _alarm)
    results = []
    for name, (filename, valid, read) in readers(work).items():
        for case, data in cases(valid):
            folder = work / name / case
            path = folder / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            companions(folder, name)
            path.write_bytes(data)
            print(json.dumps({"start": f"{name}/{case}"}), flush=True)
            signal.alarm(CASE_TIMEOUT_S)
            try:
                read(str(path))
                outcome, message = "read", ""
            except VitkitError as err:
                outcome, message = "vitkit", str(err)
            except TimeoutError as err:
                outcome, message = "hang", str(err)
            except Exception as err:  # noqa: BLE001 - what this test looks for
                outcome, message = "other", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            finally:
                signal.alarm(0)
            result = {"reader": name, "case": case, "outcome": outcome, "message": message[:600], "file": filename}
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


READERS = ["image_png", "image_jpeg", "mask_png", "coco_json", "voc_annotation_xml", "voc_split_txt", "text_tsv",
           "text_jsonl", "tokenizer_json", "captions_json", "vqa_json", "class_names_txt", "weights_pth",
           "weights_safetensors", "checkpoint_ckpt", "mnist_idx"]


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory) -> dict[str, list[dict]]:
    """All cases, run once in a child process; the interpreter must survive every one of them."""
    work = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, str(work)], capture_output=True, text=True, timeout=600, env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [line["start"] for line in lines if "start" in line]
    assert proc.returncode == 0, (f"the interpreter died (status {proc.returncode}) in case {started[-1:]}:\n"
                                  f"{proc.stderr[-2000:]}")
    results = [line for line in lines if "reader" in line]
    assert len(results) == len(started)
    by_reader: dict[str, list[dict]] = {}
    for r in results:
        by_reader.setdefault(r["reader"], []).append(r)
    assert sorted(by_reader) == sorted(READERS)
    return by_reader


@pytest.mark.parametrize("reader", READERS)
def test_reader_fails_cleanly_on_random_truncated_and_empty_files(fuzz_results, reader):
    bad = []
    for r in fuzz_results[reader]:
        # a cut at a line end is still a valid text file, and one random byte can be a one-line text file
        may_read = r["case"].startswith("truncated") or r["case"] == "random-1"
        named = {Path(r["file"]).name, Path(r["file"]).parent.name} - {""}
        clear = r["outcome"] == "vitkit" and any(n in r["message"] for n in named)
        if not (clear or (may_read and r["outcome"] == "read")):
            bad.append(f"{r['case']}: {r['outcome']}: {r['message'][:300]}")
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    run_all(Path(sys.argv[1]))
