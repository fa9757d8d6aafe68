"""`vitkit export`: write a trained task as ONNX or a `torch.export` program, with its preprocessing as JSON beside
it, and check that the written file gives the Lightning module's outputs (an error above tolerance).

    vitkit export --ckpt runs/vit_tiny_digits/version_0/checkpoints/last.ckpt --format onnx --dynamic batch,size
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..explain.command import default_out_dir, load_task
from ..explain.tasks import _normalisation, eval_pipeline
from .formats import DYNAMIC_AXES, ExportError, check_format, trace, write
from .graphs import TEXT_TASKS, ExportSpec, build_spec
from .runtime import ExportedModel
from .text import build_text_spec, check_text_parity

STEMS = {"onnx": "model", "exported-program": "program"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitkit export", description="Export a trained model to ONNX or a torch.export "
                                "program (.pt2), with its preprocessing as JSON, and check the file against the model.")
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `train.py fit`")
    p.add_argument("--format", default="onnx", help="onnx (run with onnxruntime) or exported-program (.pt2)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/export next to the run's logs)")
    p.add_argument("--dynamic", default="batch", help="comma-separated axes left free: batch (the default), size "
                   "(image height/width, multiples of the patch; positions are resampled in the graph), or none")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (onnx only; 20 has GELU as one op, which "
                   "onnxruntime runs ~10%% faster on CPU than opset 18's erf chain; benchmarks/export.py)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest |exported - eager| accepted per output")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    suffix = check_format(args.format)
    dynamic = parse_dynamic(args.dynamic)
    if args.atol <= 0:
        raise ConfigError(f"--atol: found {args.atol}; expected a positive tolerance, e.g. 1e-4")
    task, ckpt = load_task(args.ckpt)
    spec, graphs, meta = plan(task, ckpt, args.ckpt, args.format, args.opset, dynamic)
    if meta["task"] == "detection" and meta["category_ids"] is None:
        print(f"note: {args.ckpt} records no dataset category ids (saved before vitkit kept them): detections will "
              "carry their label names, without a category_id")
    text = spec.task in ("seq2seq", "captioning", "vqa")
    out = Path(args.out) if args.out else default_out_dir(Path(args.ckpt)).with_name("export")
    out.mkdir(parents=True, exist_ok=True)
    stem = STEMS[args.format]
    for name, graph in graphs.items():
        file = out / (f"{stem}{suffix}" if name == "model" else f"{stem}.{name}{suffix}")
        program = trace(graph.module, tuple(graph.inputs.values()), graph.dynamic_shapes)
        write(program, file, args.format, list(graph.inputs), graph.outputs, args.opset)
        meta["graphs"][name] = {"file": file.name, "inputs": list(graph.inputs), "outputs": graph.outputs}
    if text and task.tokenizer is not None:
        task.tokenizer.save(out / "tokenizer.json")
        meta["tokenizer"] = "tokenizer.json"
    path = out / f"{stem}.json"
    path.write_text(json.dumps(meta, indent=2))
    exported = ExportedModel(path)
    meta["parity"] = check_text(spec, task, exported, dynamic, args.atol) if text else \
        check_parity(task, spec, exported, dynamic, args.atol)
    path.write_text(json.dumps(meta, indent=2))
    files = ", ".join(g["file"] for g in meta["graphs"].values())
    print(f"exported {meta['task']} ({args.format}) to {out}: {files} + {path.name}")


def parse_dynamic(text: str) -> set[str]:
    axes = {a.strip() for a in text.split(",") if a.strip()} - {"none"}
    unknown = sorted(axes - set(DYNAMIC_AXES))
    if unknown:
        raise ConfigError(f"--dynamic {text!r}: unknown axis {', '.join(unknown)}; expected a comma-separated subset "
                          f"of {', '.join(DYNAMIC_AXES)}")
    return axes


def plan(task, ckpt: dict, ckpt_path: str, fmt: str, opset: int | None, dynamic: set[str]):
    """A loaded task's export spec, its graphs by name (`GraphSpec`) and the metadata the runtime reads."""
    text = type(task).__name__ in TEXT_TASKS
    spec = build_text_spec(task, dynamic) if text else build_spec(task, "size" in dynamic)
    graphs = spec.graphs if text else spec.graph_specs(dynamic)
    return spec, graphs, build_meta(spec, task, ckpt, ckpt_path, fmt, opset, dynamic)


def build_meta(spec, task, ckpt: dict, ckpt_path: str, fmt: str, opset: int | None, dynamic: set[str]) -> dict:
    """What the runtime needs to preprocess and read the outputs (the graphs' files are added as written)."""
    hp = getattr(task, "hparams", {})
    meta = {"task": spec.task, "model": str(hp.get("model") or hp.get("encoder") or type(task).__name__),
            "format": fmt, "graphs": {}, "dynamic_axes": sorted(dynamic),
            "opset": opset if fmt == "onnx" else None,
            "checkpoint": str(Path(ckpt_path).resolve()), "vitkit_version": __version__, **spec.extra_meta}
    if spec.image_size is None:  # seq2seq: text in, text out
        return meta
    mean, std = _normalisation(ckpt)
    transform = None
    if spec.task != "detection":  # detectors letterbox onto their canvas (the runtime does it, as the data module)
        import albumentations as A

        transform = A.to_dict(eval_pipeline(ckpt, spec.image_size)[0])
    names = getattr(task, "class_names", None)
    return {**meta, "image_size": list(spec.image_size), "patch_size": list(spec.patch_size), "mean": list(mean),
            "std": list(std), "class_names": list(names) if names else None, "transform": transform}


# --------------------------------------------------------------------------- parity
def check_parity(task, spec: ExportSpec, exported: ExportedModel, dynamic: set[str], atol: float) -> list[dict]:
    """Run the exported file and the eager model on a batch at the trained size, and on another batch size and
    image size where those are dynamic; print max |diff| per output; an ExportError above `atol`."""
    cases = [(2, 0)]
    if dynamic:
        cases.append((3 if "batch" in dynamic else 2, 1 if "size" in dynamic else 0))
    results, bad = [], []
    for batch, grow in cases:
        x = spec.example(batch, grow)
        got = exported.run(x.numpy())
        want = reference(task, spec, x, native=grow == 0)
        shape = "x".join(map(str, x.shape))
        for name, expected in zip(spec.output_names, want):
            diff = _max_diff(got[name], expected.numpy())
            results.append({"input": shape, "output": name, "max_abs_diff": diff})
            print(f"parity {shape} {name}: max |diff| {diff:.3g}")
            if not diff <= atol:
                bad.append(f"{name} at {shape}: {diff:.3g}")
    _raise_if(bad, exported, atol)
    return results


def check_text(spec, task, exported: ExportedModel, dynamic: set[str], atol: float) -> list[dict]:
    """The text tasks' parity (`vitkit.export.text.check_text_parity`), printed; an ExportError above `atol` or
    where the exported greedy loop decodes other tokens than the model."""
    rows, bad = check_text_parity(spec, task, exported, dynamic)
    for r in rows:
        if "max_abs_diff" in r:
            print(f"parity {r['input']} {r['output']}: max |diff| {r['max_abs_diff']:.3g}")
            if not r["max_abs_diff"] <= atol:
                bad.append(f"{r['output']} at {r['input']}: {r['max_abs_diff']:.3g}")
        else:
            print(f"parity {r['input']} greedy tokens ({r['length']} of {r['steps']} steps): "
                  f"{'identical' if r['identical'] else 'DIFFERENT'}")
    _raise_if(bad, exported, atol)
    return rows


def _raise_if(bad: list[str], exported: ExportedModel, atol: float) -> None:
    if bad:
        raise ExportError(f"{exported.path}: exported outputs differ from the eager model above --atol {atol:g} "
                          f"({'; '.join(bad)}); the files are kept for inspection")


@torch.no_grad()
def reference(task, spec: ExportSpec, x: torch.Tensor, native: bool) -> list[torch.Tensor]:
    """The eager outputs: at the trained size from the Lightning module itself (detection through its own
    `postprocess`), at another size from the graph's eager forward (the module refuses other sizes)."""
    if not native:
        out = spec.graph(x)
    elif spec.task == "detection":
        S = x.shape[-1]
        targets = [{"scale": (1.0, 1.0), "orig_size": (S, S)} for _ in range(len(x))]
        preds = task.predict_boxes(task(x), targets, S)
        out = tuple(torch.stack([p[k] for p in preds]) for k in ("boxes", "scores", "labels"))
    else:
        out = task(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
