"""CPU inference of exported models: torch eager vs torch.compile vs onnxruntime (graph optimisation ALL, 2 intra-op
threads, and 1 for a like-for-like with torch at 1 thread; see --torch-threads; ONNX opset 20, the export default,
and opset 18 whose GELU is an erf chain), for the digits speedrun classifier
and the shapes segmenter (random weights: speed does not depend on them), and greedy decoding of the numbers
translator (eager `generate` vs the exported encoder + decoder step). Rounds interleave the runners
(A, B, C, A, B, C, ...) so that drift in the machine hits each alike.

    python benchmarks/export.py [--rounds 5] [--seconds 1.5] [--torch-threads 1]

Writes benchmarks/results/export.json and prints a markdown table (images or sentences per second, ratio vs eager)."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from vitkit.export.formats import dynamic_shapes, trace, write
from vitkit.export.graphs import build_spec
from vitkit.export.text import build_text_spec, greedy_decode
from vitkit.tasks import ImageClassifier, SemanticSegmenter, Seq2Seq

RESULTS = Path(__file__).resolve().parent / "results" / "export.json"
THREADS = 2
OPSET = 20  # `vitkit export`'s default; opset 18 (no Gelu op) is timed beside it


def models() -> dict[str, tuple[torch.nn.Module, int]]:
    """The two configs' models (configs/classification/digits_speedrun.yaml, configs/segmentation/shapes_segmenter.yaml)
    and the batch size each is timed at."""
    torch.manual_seed(0)
    digits = ImageClassifier("vit_nano_patch4_32", num_classes=10, img_size=16, model_kwargs={
        "depth": 4, "stem_channels": [32, 64, 128], "global_pool": "avg", "class_token": False})
    shapes = SemanticSegmenter("segmenter_vit_nano_patch8_64", num_classes=5, img_size=64,
                               model_kwargs={"head": "conv", "head_kwargs": {"channels": 48}})
    return {"digits classifier (16 px, batch 64)": (digits.eval(), 64),
            "shapes segmenter (64 px, batch 8)": (shapes.eval(), 8)}


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runners(task: torch.nn.Module, batch: int, folder: Path) -> dict:
    spec = build_spec(task, dynamic_size=False)
    h, w = spec.image_size
    x = torch.randn(batch, 3, h, w)
    program = trace(spec.graph, (x,), dynamic_shapes({"batch"}, spec.patch_size))
    paths = {}
    for opset in (OPSET, 18):
        paths[opset] = folder / f"{spec.task}_opset{opset}.onnx"
        write(program, paths[opset], "onnx", ["pixels"], spec.output_names, opset)
    session, single, old = ort_session(paths[OPSET], THREADS), ort_session(paths[OPSET], 1), ort_session(paths[18], 1)
    pixels = x.numpy()
    compiled = torch.compile(spec.graph)

    def eager():
        with torch.inference_mode():
            spec.graph(x)

    def compiled_run():
        with torch.inference_mode():
            compiled(x)

    return {"torch eager": eager, "torch.compile": compiled_run,
            f"onnxruntime ({THREADS} threads)": lambda: session.run(None, {"pixels": pixels}),
            "onnxruntime (1 thread)": lambda: single.run(None, {"pixels": pixels}),
            "onnxruntime opset 18 (1 thread)": lambda: old.run(None, {"pixels": pixels})}


def translator() -> Seq2Seq:
    """The model of configs/seq2seq/numbers_tiny.yaml (transformer_tiny, 512 tokens, max_len 48)."""
    torch.manual_seed(0)
    return Seq2Seq("transformer_tiny", vocab_size=512, max_len=48, model_kwargs={"dropout": 0.0}).eval()


def text_runners(task: Seq2Seq, batch: int, folder: Path) -> dict:
    """Greedy decoding of `batch` random 16-token sources for 24 new tokens (the config's max_new_tokens; random
    weights never end early, so every runner decodes all 24): eager `generate` (growing KV cache) vs the exported
    encoder + decoder step (static KV cache) in `vitkit.export.text.greedy_decode` on onnxruntime."""
    spec = build_text_spec(task, {"batch"})
    sessions = {}
    for name, graph in spec.graphs.items():
        path = folder / f"seq2seq.{name}.onnx"
        write(trace(graph.module, tuple(graph.inputs.values()), graph.dynamic_shapes), path, "onnx",
              list(graph.inputs), graph.outputs, OPSET)
        sessions[name] = ort_session(path, 1)
    src = torch.randint(3, 512, (batch, 16))
    dec, enc, step = spec.extra_meta["decoder"], sessions["encoder"], sessions["decoder"]
    step_inputs = [i.name for i in step.get_inputs()]
    enc_out, step_out = spec.graphs["encoder"].outputs, spec.graphs["decoder"].outputs

    def eager():
        task.model.generate(src, max_new_tokens=24)

    def onnx():
        encoded = dict(zip(enc_out, enc.run(None, {"src": src.numpy()})))
        greedy_decode(encoded, lambda f: dict(zip(step_out, step.run(None, {n: f[n] for n in step_inputs}))), dec, 24)

    return {"torch eager": eager, "onnxruntime (1 thread)": onnx}


def images_per_second(fn, batch: int, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per runner per round")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (on the 2-core test machine "
                   "torch ran ~20x slower with 2 than with 1: its OpenMP workers stall there)")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(name, task, batch, runners) for name, (task, batch) in models().items()]
        jobs.append(("numbers translator (greedy, 24 tokens, batch 32)", translator(), 32, text_runners))
        for name, task, batch, make in jobs:
            run = make(task, batch, Path(tmp))
            for fn in run.values():  # warm-up (and torch.compile's compilation)
                for _ in range(3):
                    fn()
            speeds = {k: [] for k in run}
            for _ in range(args.rounds):
                for k, fn in run.items():
                    speeds[k].append(images_per_second(fn, batch, args.seconds))
            eager = statistics.median(speeds["torch eager"])
            for k, v in speeds.items():
                med = statistics.median(v)
                rows.append({"model": name, "runtime": k, "inputs_per_s": round(med, 1),
                             "vs_eager": round(med / eager, 2), "rounds": [round(s, 1) for s in v]})
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                   "torch_threads": args.torch_threads, "ort_threads": [THREADS, 1], "opset": OPSET,
                                   "torch": torch.__version__, "onnxruntime": ort.__version__, "rows": rows},
                                  indent=2))
    print("| model | runtime | inputs/s (median of rounds) | vs eager |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['runtime']} | {r['inputs_per_s']} | {r['vs_eager']}x |")


if __name__ == "__main__":
    main()
