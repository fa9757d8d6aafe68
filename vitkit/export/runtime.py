"""Run an exported vitkit model: `ExportedModel(path)` reads the .onnx files (onnxruntime) or .pt2 programs
(`torch.export.load`) and the JSON beside them, preprocesses PIL images (or tokenizes text) as the task was
evaluated, and returns what the task's `predict_step` returns per input (without "path"). Text models decode
greedily over their exported decoder step (`vitkit.export.text.greedy_decode`).

    model = ExportedModel("runs/vit_tiny_digits/version_0/export/model.onnx")
    model.predict([PIL.Image.open("seven.png")])  # [{"labels": ["7", ...], "probs": [0.93, ...]}]
    ExportedModel("runs/transformer_tiny_numbers/version_0/export/model.json").predict(["forty-two"])
"""
from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_convert

from ..errors import CheckpointError, ConfigError


class ExportedModel:
    """An exported model: its graphs (one, or a text model's encoder and decoder step), the metadata written next
    to them (`.meta`) and, for text tasks, the tokenizer. `path` is the .json or any of the model's files."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        meta_path = metadata_path(self.path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: file not found; expected a model written by `vitkit export`")
        if not meta_path.is_file():
            raise CheckpointError(f"{meta_path}: file not found; expected the metadata `vitkit export` writes next to "
                                  f"{self.path.name}")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise CheckpointError(f"{meta_path}: not JSON ({err}); expected the metadata `vitkit export` "
                                  "writes") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("graphs"), dict) or "task" not in meta:
            found = sorted(meta)[:8] if isinstance(meta, dict) else type(meta).__name__
            raise CheckpointError(f"{meta_path}: found {found}; expected the metadata `vitkit export` writes (with "
                                  "'task' and 'graphs')")
        runners = {}
        for name, graph in meta["graphs"].items():
            file = meta_path.parent / graph["file"]
            if not file.is_file():
                raise CheckpointError(f"{file}: file not found; {meta_path.name} names it as the {name} graph")
            runners[name] = (_onnx_runner(file, threads) if file.suffix == ".onnx"
                             else _program_runner(file, graph["inputs"]))
        tokenizer = None
        if meta.get("tokenizer"):
            from ..data.text import TextTokenizer

            tokenizer = TextTokenizer.from_file(meta_path.parent / meta["tokenizer"])
        self._setup(meta, runners, tokenizer)

    def _setup(self, meta: dict, runners: dict, tokenizer) -> None:
        self.meta, self.graphs, self._runners, self.tokenizer = meta, meta["graphs"], runners, tokenizer
        self.output_names: list[str] = list(next(iter(self.graphs.values()))["outputs"])
        spec = meta.get("transform")
        self._transform = A.from_dict(spec) if spec else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> ExportedModel:
        """The same runtime over a Lightning checkpoint's eager graphs (what `vitkit export` would trace), so a
        checkpoint and its exported files predict through one preprocessing and one output format."""
        from ..explain.command import load_task
        from .command import plan

        task, ckpt = load_task(str(path), device)
        _, graphs, meta = plan(task, ckpt, str(path), "torch", None, {"batch"})
        runners = {}
        for name, graph in graphs.items():
            meta["graphs"][name] = {"file": None, "inputs": list(graph.inputs), "outputs": graph.outputs}
            runners[name] = _eager_runner(graph.module.to(device), list(graph.inputs), torch.device(device))
        model = cls.__new__(cls)
        model.path = Path(path)
        model._setup(meta, runners, getattr(task, "tokenizer", None))
        return model

    # -- preprocessing --
    def preprocess(self, images: list[Image.Image]) -> np.ndarray:
        """float32 (B, 3, H, W) at `meta["image_size"]`, normalised as the data module does for predict."""
        return self._prepare(images)[0]

    def _prepare(self, images: list[Image.Image]) -> tuple[np.ndarray, list[dict]]:
        if not images:
            raise ConfigError("ExportedModel: no images given; expected a list of PIL images")
        arrays = [np.asarray(im.convert("RGB")) for im in images]
        info = [{"orig_size": a.shape[:2]} for a in arrays]
        if self.meta["task"] == "detection":
            return self._letterbox(arrays, info), info
        h, w = self.meta["image_size"]
        if self._transform is not None:
            pixels = [self._transform(image=a)["image"] for a in arrays]
            pixels = [p.numpy() if isinstance(p, torch.Tensor) else p for p in pixels]
        else:  # no pipeline recorded: resize and normalise
            pixels = [_normalise(np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)), self.meta)
                      for a in arrays]
        return np.stack(pixels).astype(np.float32), info

    def _letterbox(self, arrays: list[np.ndarray], info: list[dict]) -> np.ndarray:
        from ..data.detection import letterbox

        size = self.meta["image_size"][0]
        fill = tuple(int(round(m * 255)) for m in self.meta["mean"])
        canvases = []
        for a, i in zip(arrays, info):
            canvas, _, i["scale"] = letterbox(a, np.zeros((0, 4), np.float32), size, fill)
            canvases.append(_normalise(canvas, self.meta))
        return np.stack(canvases).astype(np.float32)

    def encode_texts(self, texts: list[str], limit: int, what: str) -> np.ndarray:
        """Token ids (B, N) int64 of `texts`, right-padded; a text of more than `limit` tokens is an error."""
        if self.tokenizer is None:
            raise ConfigError(f"{self.path}: no tokenizer for this {self.meta['task']} model; expected the "
                              "tokenizer.json `vitkit export` writes from a checkpoint saved by `train.py fit`")
        ids = [self.tokenizer.encode(t) for t in texts]
        for i, row in enumerate(ids):
            if len(row) > limit:
                shown = texts[i] if len(texts[i]) <= 40 else texts[i][:40] + "..."
                where = what if len(texts) == 1 else f"{what} {i}"
                raise ConfigError(f"{where} ({shown!r}): {len(row)} tokens; expected at most {limit} (the model's "
                                  "max_len)")
        out = np.full((len(ids), max(1, max(map(len, ids)))), self.tokenizer.pad_id, np.int64)
        for i, row in enumerate(ids):
            out[i, : len(row)] = row
        return out

    # -- running --
    def run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph's raw outputs by name."""
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        return dict(zip(self.graphs[name]["outputs"], self._runners[name](feeds)))

    def run(self, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The raw outputs by name of a one-graph model: `run(pixels)` ((B, 3, H, W) float32), or for VQA
        `run(pixels, question)` (question ids (B, Q) int64)."""
        if "model" not in self.graphs:
            raise ConfigError(f"{self.path}: a {self.meta['task']} model is an encoder and a decoder step; use "
                              "generate() or predict()")
        names = self.graphs["model"]["inputs"]
        dtypes = [np.float32, np.int64]
        return self.run_graph("model", {n: np.asarray(x, dtype=t) for n, x, t in zip(names, inputs, dtypes)})

    def generate(self, inputs: np.ndarray, max_new_tokens: int | None = None, min_steps: int = 0) -> \
            tuple[np.ndarray, np.ndarray]:
        """Greedy decoding of source ids (B, S) or pixels (B, 3, H, W) through the exported encoder and decoder
        step: ids (B, L) without BOS, padded after EOS, and each step's logits (B, L, vocab)."""
        from .text import greedy_decode

        name = self.graphs["encoder"]["inputs"][0]
        inputs = np.asarray(inputs, np.int64 if name == "src" else np.float32)
        encoded = self.run_graph("encoder", {name: inputs})
        return greedy_decode(encoded, lambda feeds: self.run_graph("decoder", feeds), self.meta["decoder"],
                             max_new_tokens, min_steps)

    def predict(self, inputs: list, questions: list[str] | None = None) -> list[dict]:
        """One JSON-able dict per input, as the task's `predict_step` writes it (without "path"): `inputs` are PIL
        images (texts for seq2seq); `questions` one per image for VQA."""
        if not inputs:
            raise ConfigError("ExportedModel.predict: no inputs given; expected a non-empty list")
        task = self.meta["task"]
        if task == "seq2seq":
            return self._predict_seq2seq(list(inputs))
        if (questions is not None) != (task == "vqa") or (questions is not None and len(questions) != len(inputs)):
            raise ConfigError(f"ExportedModel.predict: a {task} model takes "
                              f"{'one question per image' if task == 'vqa' else 'images only, no questions'}")
        pixels, info = self._prepare(inputs)
        if task == "captioning":
            ids, _ = self.generate(pixels)
            return [{"caption": self.tokenizer.decode(row)} for row in ids.tolist()]
        if task == "vqa":
            logits = self.run(pixels, self.encode_texts(questions, self.meta["max_len"], "question"))["logits"]
            p = torch.from_numpy(logits).float().softmax(-1).max(-1)
            names = self._names(logits.shape[1])
            return [{"question": q, "answer": names[i], "prob": round(v, 6)}
                    for q, i, v in zip(questions, p.indices.tolist(), p.values.tolist())]
        out = {k: torch.from_numpy(np.asarray(v)) for k, v in self.run(pixels).items()}
        return getattr(self, f"_predict_{task}")(out, info)

    def _predict_seq2seq(self, texts: list[str]) -> list[dict]:
        outputs = [""] * len(texts)  # an empty input gets an empty output, as in `predict`
        rows = [i for i, t in enumerate(texts) if self.tokenizer.encode(t)]
        if rows:
            src = self.encode_texts([texts[i] for i in rows], self.meta["decoder"]["max_len"], "text")
            ids, _ = self.generate(src)
            for i, row in zip(rows, ids.tolist()):
                outputs[i] = self.tokenizer.decode(row)
        return [{"source": t, "output": o} for t, o in zip(texts, outputs)]

    def _predict_classification(self, out: dict, info: list[dict]) -> list[dict]:
        names, k = self._names(out["logits"].shape[1]), self.meta["top_k"]
        top_p, top_i = out["logits"].softmax(dim=-1).topk(k, dim=-1)
        return [{"labels": [names[i] for i in idx], "probs": [round(v, 6) for v in pr]}
                for idx, pr in zip(top_i.tolist(), top_p.tolist())]

    def _predict_segmentation(self, out: dict, info: list[dict]) -> list[dict]:
        """Per image the class index of every pixel at its own size ("mask", rows of ints; `predict` writes it as
        an index PNG instead) and the fraction of pixels of each class present."""
        names = self._names(out["logits"].shape[1])
        rows = []
        for logits, i in zip(out["logits"], info):
            mask = F.interpolate(logits[None], size=tuple(i["orig_size"]), mode="bilinear", align_corners=False)
            mask = mask[0].argmax(0).numpy()
            counts = np.bincount(mask.ravel(), minlength=len(names)) / mask.size
            rows.append({"mask": mask.tolist(),
                         "fractions": {names[k]: round(float(v), 6) for k, v in enumerate(counts) if v > 0}})
        return rows

    def _predict_detection(self, out: dict, info: list[dict]) -> list[dict]:
        """Detections above the display threshold in the image's own pixels; `category_id` is the dataset's id of
        the label, left out when the checkpoint did not record them (one saved before vitkit kept them)."""
        m = self.meta
        names, ids = self._names(m["num_classes"]), m.get("category_ids")
        rows = []
        for boxes, scores, labels, i in zip(out["boxes"], out["scores"], out["labels"], info):
            (sx, sy), (h, w) = i["scale"], i["orig_size"]
            box = boxes / boxes.new_tensor([sx, sy, sx, sy])
            box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                               box[:, 3].clamp(0, h)], 1)
            keep = (scores > m["score_threshold"]) & (scores >= m["display_threshold"])
            xywh = box_convert(box[keep], "xyxy", "xywh").tolist()
            rows.append({"detections": [
                {"label": names[c], **({"category_id": ids[c]} if ids else {}), "score": round(s, 5),
                 "bbox": [round(v, 2) for v in b]}
                for b, s, c in zip(xywh, scores[keep].tolist(), labels[keep].tolist())]})
        return rows

    def _names(self, n: int) -> list[str]:
        return list(self.meta.get("class_names") or [str(i) for i in range(n)])


def _normalise(image: np.ndarray, meta: dict) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W), (x / 255 - mean) / std."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return x.transpose(2, 0, 1)


def metadata_path(path: Path) -> Path:
    """The JSON of an exported model: the path itself, or `<stem>.json` beside a file `<stem>[.graph].onnx|.pt2`."""
    if path.suffix == ".json":
        return path
    return path.with_name(path.name.split(".")[0] + ".json")


def _onnx_runner(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # the exporter drops inputs a graph does not read
    return lambda feeds: session.run(None, {n: feeds[n] for n in names})


def _program_runner(path: Path, inputs: list[str]):
    return _eager_runner(torch.export.load(str(path)).module(), inputs, torch.device("cpu"))


def _eager_runner(module, inputs: list[str], device: torch.device):
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(feeds[n]).to(device) for n in inputs))
        return [t.cpu().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

    return run
