"""Throughput of vitkit against timm: images/s of a training step and of inference, same config, same batch.

What it measures. For each model config, timm's model is built and its state dict is loaded into vitkit's
(strict), so both compute the same function (the script prints the largest output difference once). Then,
per mode:

- `train`: `zero_grad(set_to_none=True)`, forward, cross-entropy, backward, AdamW step (torch's default
  AdamW implementation for the device);
- `infer`: `eval()`, forward under `torch.inference_mode()`.
`--precision bf16` wraps the forward (and loss) in bf16 autocast, on CPU as well as CUDA.

Both libraries run in the same process, interleaved: in each of `--rounds` rounds each library times
`--steps` steps, and the order alternates (timm first, then vitkit first, ...) so that drift of a noisy
machine (turbo, other jobs, thermal) falls on both alike. `--warmup` untimed steps per library come first
(they also absorb `torch.compile`). Each step is timed on its own: `time.perf_counter` on CPU, CUDA events on
GPU (no host sync between steps; `torch.cuda.synchronize` before and after each library's turn).

Reported per (model, mode): each library's median images/s over the rounds, and vitkit÷timm as the median
of the per-round ratios (each ratio compares two runs taken seconds apart, so it is the number least moved
by the machine's drift) with its min–max over the rounds. On CUDA also the peak memory a step allocates
above what was held before it (both models, their optimiser state and last gradients). `--json` keeps
every step's time.

On a CPU shared with other jobs, `--threads 1` gives steadier numbers: with more runnable threads than cores,
every parallel op waits for its slowest descheduled thread, and a train step runs some 8,000 ops.

Usage (from the repository root):

    python benchmarks/throughput.py                     # default set, CPU or CUDA (auto), ~6-8 min on 2 CPU cores
    python benchmarks/throughput.py --quick             # a tiny set, ~1-2 min on 2 CPU cores
    python benchmarks/throughput.py --models vit_base_patch16_224 --modes train --batch-size 64 \\
        --precision bf16 --compile --json out.json      # one config on a GPU, all raw numbers to out.json
    python benchmarks/throughput.py --families --threads 1 --json out.json   # DINOv2/v3, CLIP, SigLIP, EVA-02, RoPE
    python benchmarks/throughput.py --list              # the model configs it knows
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import timm
import timm.optim
import torch
import torch.nn.functional as F
from torch import nn

import vitkit
from vitkit.nn import set_sdpa_backends

try:
    from vitkit.tasks.optim import build_adamw
except ImportError:  # a machine with torch + timm only (a lent GPU has no albumentations): load that one file
    import importlib.util
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location("_vitkit_optim", Path(vitkit.__file__).parent / "tasks" / "optim.py")
    _optim = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_optim)
    build_adamw = _optim.build_adamw

# vitkit name -> (timm name, timm kwargs that make it the same architecture).
TIMM_EQUIVALENT: dict[str, tuple[str, dict]] = {
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224", {}),
    "vit_tiny_patch32_224": ("vit_tiny_patch16_224", {"patch_size": 32}),
    "vit_small_patch16_224": ("vit_small_patch16_224", {}),
    "vit_small_patch32_224": ("vit_small_patch32_224", {}),
    "vit_base_patch16_224": ("vit_base_patch16_224", {}),
    "vit_base_patch32_224": ("vit_base_patch32_224", {}),
    "vit_large_patch16_224": ("vit_large_patch16_224", {}),
    "vit_large_patch32_224": ("vit_large_patch32_224", {}),
    "deit_tiny_patch16_224": ("deit_tiny_patch16_224", {}),
    "deit_small_patch16_224": ("deit_small_patch16_224", {}),
    "deit_base_patch16_224": ("deit_base_patch16_224", {}),
    "vit_small_patch16_reg4_224": ("vit_small_patch16_224", {"reg_tokens": 4, "no_embed_class": True}),
    "vit_tiny_patch4_32": ("vit_tiny_patch16_224", {"patch_size": 4, "img_size": 32}),
    "vit_small_patch4_32": ("vit_small_patch16_224", {"patch_size": 4, "img_size": 32}),
    "vit_nano_patch4_32": (
        "vit_tiny_patch16_224",
        {"patch_size": 4, "img_size": 32, "embed_dim": 128, "depth": 6, "num_heads": 4},
    ),
}

# The pretrained families (--families): vitkit's registered name is timm's; the kwargs go to both libraries (the
# families' CPU-sized members at 224 px: ViT-S sizes for CLIP/SigLIP, whose smallest timm size is ViT-B).
FAMILY_KWARGS: dict[str, dict] = {
    "vit_small_patch14_dinov2": {"img_size": 224},
    "vit_small_patch14_reg4_dinov2": {"img_size": 224},
    "vit_base_patch16_clip_224": {"embed_dim": 384, "num_heads": 6},
    "vit_base_patch16_siglip_224": {"embed_dim": 384, "num_heads": 6},
    "eva02_small_patch14_224": {},
    "vit_small_patch16_rope_224": {},
    "vit_small_patch16_rope_mixed_224": {},
    "vit_small_patch16_dinov3": {"img_size": 224},
}
TIMM_EQUIVALENT.update({name: (name, kwargs) for name, kwargs in FAMILY_KWARGS.items()})

# Default batch per model when --batch-size is not given: (cpu, cuda).
DEFAULT_BATCH = {"vit_tiny_patch4_32": (64, 256), "vit_nano_patch4_32": (64, 256), "vit_small_patch4_32": (32, 256)}
DEFAULT_BATCH_224 = (16, 128)
# 10 classes for the 32x32 (CIFAR-sized) configs, ImageNet's 1000 otherwise.
NUM_CLASSES = {"vit_tiny_patch4_32": 10, "vit_small_patch4_32": 10, "vit_nano_patch4_32": 10}

DEFAULT_MODELS = ["vit_small_patch16_224", "vit_tiny_patch4_32"]
QUICK_BATCH = {"vit_tiny_patch4_32": 32, "vit_tiny_patch16_224": 8}  # --quick: model -> batch
MODES = ("train", "infer")


@dataclass
class Result:
    """All raw numbers of one (model, mode) comparison."""

    model: str
    timm_model: str
    timm_kwargs: dict
    img_size: int
    batch: int
    mode: str
    precision: str
    compiled: bool
    max_abs_diff: float
    # seconds of each timed step, per library, per round: step_seconds[lib][round][step]
    step_seconds: dict[str, list[list[float]]] = field(default_factory=lambda: {"timm": [], "vitkit": []})
    first: list[str] = field(default_factory=list)  # which library ran first in each round
    peak_mib: dict[str, float | None] = field(default_factory=lambda: {"timm": None, "vitkit": None})
    sdpa: str = "default"
    vitkit_sdpa: str | None = None
    vitkit_kwargs: dict = field(default_factory=dict)
    model_flops_per_image: float | None = None
    peak_tflops: float | None = None  # measured matmul peak of the device at this precision

    def round_seconds(self, lib: str) -> list[float]:
        return [sum(steps) for steps in self.step_seconds[lib]]

    def images_per_s(self, lib: str) -> list[float]:
        """Throughput of each round."""
        return [self.batch * len(steps) / sum(steps) for steps in self.step_seconds[lib]]

    def ratios(self) -> list[float]:
        """vitkit÷timm throughput of each round."""
        return [t / v for t, v in zip(self.round_seconds("timm"), self.round_seconds("vitkit"))]

    def mfu(self, lib: str) -> float | None:
        """Model-FLOP utilisation: model FLOPs per second over the measured matmul peak."""
        if not (self.model_flops_per_image and self.peak_tflops):
            return None
        return statistics.median(self.images_per_s(lib)) * self.model_flops_per_image / (self.peak_tflops * 1e12)

    def summary(self) -> dict:
        return {
            "timm_img_s": statistics.median(self.images_per_s("timm")),
            "vitkit_img_s": statistics.median(self.images_per_s("vitkit")),
            "ratio_median": statistics.median(self.ratios()),
            "ratio_min": min(self.ratios()),
            "ratio_max": max(self.ratios()),
            "timm_mfu": self.mfu("timm"),
            "vitkit_mfu": self.mfu("vitkit"),
        }


# -- building the two models --------------------------------------------------------------------------------
def build_pair(name: str, num_classes: int, device: torch.device,
               vitkit_kwargs: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """timm's model and vitkit's, the latter loaded (strict) with the former's weights. `vitkit_kwargs`
    (e.g. patch_drop_rate) change what vitkit computes, not its parameters; rows made so are labelled."""
    timm_name, timm_kwargs = TIMM_EQUIVALENT[name]
    ref = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    shared = FAMILY_KWARGS.get(name, {})
    ours = vitkit.create_model(name, num_classes=num_classes, **shared, **(vitkit_kwargs or {}))
    state = ref.state_dict()
    if type(ref).__name__ == "Eva":  # EVA-02, RoPE ViTs, DINOv3: timm's other ViT class, other weight names
        from vitkit.models.pretrained import convert_timm_eva

        state = convert_timm_eva(state)
    ours.load_state_dict(state, strict=True)
    return ref.to(device), ours.to(device)


@torch.no_grad()
def max_output_diff(ref: nn.Module, ours: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference of the two models' logits on `x`, in fp32 eval mode."""
    ref.eval()
    ours.eval()
    return (ref(x) - ours(x)).abs().max().item()


def img_size_of(model: nn.Module) -> int:
    return model.patch_embed.img_size[0]


def random_batch(batch: int, size: int, num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random images (B, 3, size, size) and labels (B,); the same tensors feed both libraries."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return x.to(device), y.to(device)


# -- one step of each mode ----------------------------------------------------------------------------------
@contextlib.contextmanager
def autocast(device: torch.device, precision: str, sdpa: str = "default"):
    """bf16 autocast (or nothing for fp32), and SDPA limited to one backend when `sdpa` names one."""
    with contextlib.ExitStack() as stack:
        if precision != "fp32":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if sdpa != "default":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                       "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[sdpa]
            stack.enter_context(sdpa_kernel(backend))
        yield


def library_optimizer(lib: str, model: nn.Module) -> torch.optim.Optimizer:
    """Each library's own AdamW factory, as its training code builds it (weight decay 0.05, no decay on
    norms/biases/tokens): timm's `create_optimizer_v2`, vitkit's `build_adamw` (fused where supported)."""
    if lib == "timm":
        return timm.optim.create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)
    return build_adamw(model, lr=1e-4, weight_decay=0.05)


def make_train_step(lib: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: Callable) -> Callable[[], None]:
    """Forward, cross-entropy, backward and the library's AdamW step on a fixed batch."""
    opt = library_optimizer(lib, getattr(model, "_orig_mod", model))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def make_infer_step(model: nn.Module, x: torch.Tensor, amp: Callable) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), amp():
            model(x)

    return step


def make_steps(models: dict[str, nn.Module], mode: str, x: torch.Tensor, y: torch.Tensor, amp: Callable) -> dict:
    """Each library's step function for `mode`, with its model switched to train() or eval()."""
    for m in models.values():
        m.train(mode == "train")
    if mode == "train":
        return {lib: make_train_step(lib, m, x, y, amp) for lib, m in models.items()}
    return {lib: make_infer_step(m, x, amp) for lib, m in models.items()}


# -- timing -------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_mark(device: torch.device) -> float | torch.cuda.Event:
    """A point in time: the host clock on CPU, an event on the current stream on CUDA (no host sync)."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event


def seconds_between(a: float | torch.cuda.Event, b: float | torch.cuda.Event) -> float:
    return a.elapsed_time(b) / 1000 if isinstance(a, torch.cuda.Event) else b - a


def time_steps(step: Callable[[], None], n: int, device: torch.device) -> tuple[list[float], float | None]:
    """Seconds of each of `n` steps, and on CUDA the peak MiB allocated above what was resident before them."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    marks = [clock_mark(device)]
    for _ in range(n):
        step()
        marks.append(clock_mark(device))
    sync(device)
    seconds = [seconds_between(a, b) for a, b in zip(marks, marks[1:])]
    peak = (torch.cuda.max_memory_allocated(device) - resident) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def run_interleaved(steps: dict[str, Callable[[], None]], result: Result, args, device: torch.device) -> None:
    """Warm both up, then `rounds` rounds of `steps` timed steps each, alternating which library goes first."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync(device)
    for r in range(args.rounds):
        order = ("timm", "vitkit") if r % 2 == 0 else ("vitkit", "timm")
        result.first.append(order[0])
        for lib in order:
            seconds, peak = time_steps(steps[lib], args.steps, device)
            result.step_seconds[lib].append(seconds)
            if peak is not None:
                result.peak_mib[lib] = max(peak, result.peak_mib[lib] or 0.0)


def bench_model(name: str, args, device: torch.device, peak: dict[str, float], on_result: Callable = lambda r: None):
    """Build the pair once, check they agree, then compare each (compile, precision, mode) requested;
    yields each Result as it is measured (after passing it to `on_result`)."""
    num_classes = args.num_classes or NUM_CLASSES.get(name, 1000)
    ref, ours = build_pair(name, num_classes, device, args.vitkit_kwargs)
    size, batch = img_size_of(ours), batch_size(name, args, device)
    x, y = random_batch(batch, size, num_classes, device)
    diff = max_output_diff(ref, ours, x)
    print(f"{name}: {size}px, batch {batch}, max |timm - vitkit| logits = {diff:.2e}", file=sys.stderr)
    timm_name, timm_kwargs = TIMM_EQUIVALENT[name]
    for compiled in compile_settings(args.compile):
        models = {"timm": ref, "vitkit": ours}
        if compiled:
            torch._dynamo.reset()
            models = {lib: torch.compile(m, mode=args.compile_mode) for lib, m in models.items()}
        for precision in args.precision:
            amp = functools.partial(autocast, device, precision, args.sdpa)
            for mode in args.modes:
                result = Result(name, timm_name, timm_kwargs, size, batch, mode, precision, compiled, diff,
                                sdpa=args.sdpa, vitkit_sdpa=args.vitkit_sdpa, vitkit_kwargs=args.vitkit_kwargs)
                if not args.no_mfu:
                    result.model_flops_per_image = model_flops(ref, x[:2], y[:2], mode, amp) / 2
                result.peak_tflops = peak.get(precision)
                run_interleaved(make_steps(models, mode, x, y, amp), result, args, device)
                print(format_row(result), file=sys.stderr)
                on_result(result)
                yield result


def compile_settings(choice: str) -> list[bool]:
    return {"no": [False], "yes": [True], "both": [False, True]}[choice]


def model_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, amp: Callable) -> float:
    """FLOPs of one step of the plain (timm) model on `x`, counted by torch's FlopCounterMode: forward for
    `infer`, forward + backward for `train`. Used as the *model* FLOPs of both libraries (MFU, PaLM's
    definition), so vitkit's skipped work counts as a speed-up rather than as lower utilisation."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train(mode == "train")
    with FlopCounterMode(display=False) as counter:
        if mode == "train":
            with amp():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
        else:
            with torch.no_grad(), amp():
                model(x)
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure_peak_tflops(device: torch.device, precisions: list[str]) -> dict[str, float]:
    """The best of a few large square matmuls, in TFLOP/s, per precision (bf16 = bf16 inputs; fp32 = fp32,
    with TF32 tensor cores where torch allows them). The denominator of MFU."""
    n = 8192 if device.type == "cuda" else 1024
    peak = {}
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        best = float("inf")
        for _ in range(8 if device.type == "cuda" else 3):
            sync(device)
            start = time.perf_counter()
            for _ in range(10 if device.type == "cuda" else 2):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - start) / (10 if device.type == "cuda" else 2))
        peak[precision] = 2 * n**3 / best / 1e12
    return peak


def batch_size(name: str, args, device: torch.device) -> int:
    """--batch-size if given, else the --quick batch, else the default for the model and device."""
    if args.batch_size:
        return args.batch_size
    if args.quick and name in QUICK_BATCH:
        return QUICK_BATCH[name]
    cpu, cuda = DEFAULT_BATCH.get(name, DEFAULT_BATCH_224)
    return cuda if device.type == "cuda" else cpu


# -- task models: vitkit only (timm has no segmentation/detection heads or seq2seq) --------------------------
# name -> (builder, input maker, loss); sizes per device in TASK_DEFAULTS. Train = forward, the loss below,
# backward, vitkit's fused AdamW; infer = forward under inference_mode. The detection loss is a stand-in
# (mean of the outputs; the Hungarian matching of the real task runs on the host and is not timed here).
def _segmenter(name: str, img: int):
    from vitkit.models.segmenter import create_segmenter

    return create_segmenter(name, num_classes=21, img_size=img)


def _detr(name: str, img: int):
    return vitkit.create_model(name, num_classes=4, img_size=img)


def _seq2seq(name: str, _: int):
    return vitkit.create_model(name, vocab_size=8000)


TASK_MODELS = {
    "segmenter_vit_small_patch16_512": ("segmentation", _segmenter, (512, 128)),
    "segmenter_vit_tiny_patch8_64": ("segmentation", _segmenter, (64, 64)),
    "detr_vit_small_patch16": ("detection", _detr, (512, 128)),
    "detr_vit_nano_patch8_64": ("detection", _detr, (64, 64)),
    "transformer_base": ("seq2seq", _seq2seq, (64, 128)),  # (tokens per side, batch at 64 tokens)
    "transformer_tiny": ("seq2seq", _seq2seq, (32, 64)),
}
TASK_DEFAULTS = {"cpu": ["segmenter_vit_tiny_patch8_64", "detr_vit_nano_patch8_64", "transformer_tiny"],
                 "cuda": ["segmenter_vit_small_patch16_512", "detr_vit_small_patch16", "transformer_base"]}


def _task_inputs(kind: str, size: int, batch: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    if kind == "seq2seq":
        src = torch.randint(3, 8000, (batch, size), generator=gen)
        tgt = torch.randint(3, 8000, (batch, size + 1), generator=gen)
        return (src.to(device), tgt[:, :-1].to(device)), tgt[:, 1:].to(device)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 21, (batch, size, size), generator=gen).to(device) if kind == "segmentation" else None
    return (x,), y


def _task_loss(kind: str, out, y) -> torch.Tensor:
    if kind == "segmentation":
        return F.cross_entropy(out, y)
    if kind == "seq2seq":
        return F.cross_entropy(out.flatten(0, 1), y.flatten())
    return out["pred_logits"].float().mean() + out["pred_boxes"].float().mean()


def bench_task_model(name: str, args, device: torch.device) -> list[dict]:
    kind, build, (size, gpu_batch) = TASK_MODELS[name]
    batch = args.batch_size or (gpu_batch if device.type == "cuda" else 8)
    model = build(name, size).to(device)
    inputs, y = _task_inputs(kind, size, batch, device)
    rows = []
    for compiled in compile_settings(args.compile):
        run = torch.compile(model, mode=args.compile_mode) if compiled else model
        for precision in args.precision:
            amp = functools.partial(autocast, device, precision, args.sdpa)
            opt = build_adamw(model, lr=1e-4, weight_decay=0.05)

            def train(opt=opt, amp=amp, run=run) -> None:
                opt.zero_grad(set_to_none=True)
                with amp():
                    loss = _task_loss(kind, run(*inputs), y)
                loss.backward()
                opt.step()

            def infer(amp=amp, run=run) -> None:
                with torch.inference_mode(), amp():
                    run(*inputs)

            for mode, step in (("train", train), ("infer", infer)):
                if mode not in args.modes:
                    continue
                model.train(mode == "train")
                for _ in range(args.warmup):
                    step()
                seconds, peak = time_steps(step, args.steps * args.rounds, device)
                unit = "tokens/s" if kind == "seq2seq" else "img/s"
                rate = batch * (2 * size if kind == "seq2seq" else 1) * len(seconds) / sum(seconds)
                row = {"model": name, "task": kind, "size": size, "batch": batch, "mode": mode, "precision": precision,
                       "compiled": compiled, "rate": rate, "unit": unit, "peak_mib": peak,
                       "step_seconds": seconds}
                print(f"| {name} | {kind} | {size} | {batch} | {mode} | {precision}{' +compile' if compiled else ''} | "
                      f"{rate:,.1f} {unit} | {'' if peak is None else f'{peak:.0f}'} |", file=sys.stderr)
                rows.append(row)
    return rows


# -- reporting ----------------------------------------------------------------------------------------------
def table_header(cuda: bool) -> str:
    cols = ["model", "img", "batch", "mode", "precision", "timm img/s", "vitkit img/s", "vitkit÷timm (min–max)",
            "timm MFU", "vitkit MFU"]
    if cuda:
        cols += ["timm peak MiB", "vitkit peak MiB"]
    return "| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|"


def format_row(r: Result) -> str:
    s = r.summary()
    precision = r.precision + (" +compile" if r.compiled else "") + (f" sdpa={r.sdpa}" if r.sdpa != "default" else "")
    precision += f" vitkit-sdpa={r.vitkit_sdpa}" if r.vitkit_sdpa else ""
    precision += "".join(f" vitkit {k}={v}" for k, v in r.vitkit_kwargs.items())
    cells = [r.model, str(r.img_size), str(r.batch), r.mode, precision, f"{s['timm_img_s']:.1f}",
             f"{s['vitkit_img_s']:.1f}", f"{s['ratio_median']:.3f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})",
             _pct(s["timm_mfu"]), _pct(s["vitkit_mfu"])]
    if r.peak_mib["timm"] is not None:
        cells += [f"{r.peak_mib['timm']:.0f}", f"{r.peak_mib['vitkit']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(args, device: torch.device) -> dict:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "vitkit": vitkit.__version__,
        "python": platform.python_version(),
        "args": vars(args),
    }


def write_json(path: str, env: dict, results: list[Result], extra: dict | None = None) -> None:
    records = [{**asdict(r), **r.summary(), "images_per_s": {lib: r.images_per_s(lib) for lib in r.step_seconds},
                "ratios": r.ratios()} for r in results]
    env = {**env, **(extra or {})}
    with open(path, "w") as f:
        json.dump({"environment": env, "results": records}, f, indent=2)


# -- command line -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(TIMM_EQUIVALENT), metavar="NAME",
                   help=f"vitkit model names (default: {' '.join(DEFAULT_MODELS)}; see --list)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--batch-size", type=int, help="one batch for every model (default: per model and device)")
    p.add_argument("--num-classes", type=int, help="classifier width (default: 10 for 32px configs, else 1000)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                   help="one or both; bf16 = autocast, on CPU too")
    p.add_argument("--compile", nargs="?", choices=("no", "yes", "both"), const="yes", default="no",
                   help="torch.compile both models (`--compile` = yes; `both` = eager, then compiled); "
                        "compile time is warm-up")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile mode for both libraries "
                        "(max-autotune: Triton GEMM templates with fused epilogues)")
    p.add_argument("--sdpa", choices=("default", "flash", "efficient", "cudnn", "math"), default="default",
                   help="limit scaled_dot_product_attention to one backend, for both libraries")
    p.add_argument("--vitkit-sdpa", metavar="ORDER",
                   help="vitkit only: SDPA backend order, e.g. cudnn,flash,efficient,math "
                        "(vitkit.nn.set_sdpa_backends); timm keeps torch's default")
    p.add_argument("--vitkit-kwargs", nargs="+", metavar="KEY=VALUE", default=[],
                   help="vitkit model options that change the work, e.g. patch_drop_rate=0.5 (rows labelled)")
    p.add_argument("--task-models", nargs="*", choices=sorted(TASK_MODELS), metavar="NAME",
                   help="also time vitkit's segmentation/detection/seq2seq models (no timm twin); "
                        "without names: a small set per device")
    p.add_argument("--no-mfu", action="store_true", help="skip the matmul peak and FLOP count (MFU columns)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds; even keeps the order balanced")
    p.add_argument("--steps", type=int, default=2, help="timed steps per library per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per library before the rounds")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny set: {', '.join(f'{m} batch {b}' for m, b in QUICK_BATCH.items())}; 4 rounds x 3 steps")
    p.add_argument("--json", metavar="PATH", help="write every raw timing and the environment here")
    p.add_argument("--families", action="store_true",
                   help=f"the pretrained families at CPU size: {' '.join(FAMILY_KWARGS)}")
    p.add_argument("--list", action="store_true", help="print the known configs and their timm equivalents")
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or list(QUICK_BATCH)
        args.rounds, args.steps, args.warmup = 4, 3, 2
    if args.families:
        args.models = args.models or list(FAMILY_KWARGS)
    args.models = args.models or DEFAULT_MODELS
    args.vitkit_kwargs = {k: float(v) if v.replace(".", "", 1).isdigit() else v
                          for k, v in (kv.split("=", 1) for kv in args.vitkit_kwargs)}
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    return args


def warn_if_busy(device: torch.device) -> None:
    """On CPU, say so when other jobs already keep the cores busy: the numbers will mostly measure waiting."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device.type == "cpu" and load > cores and torch.get_num_threads() > 1:
        print(f"note: load average {load:.1f} on {cores} cores; with {torch.get_num_threads()} threads a parallel "
              "op waits for its slowest descheduled thread. --threads 1 gives steadier numbers.", file=sys.stderr)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.list:
        for name, (timm_name, kw) in TIMM_EQUIVALENT.items():
            print(f"{name:28s} timm {timm_name} {kw or ''}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vitkit_sdpa:
        set_sdpa_backends(args.vitkit_sdpa.split(","))
    device = resolve_device(args.device)
    env = environment(args, device)
    warn_if_busy(device)
    print(f"{env['device_name']} ({device}, {env['threads']} threads), torch {env['torch']}, timm {env['timm']}",
          file=sys.stderr)
    peak = {} if args.no_mfu else measure_peak_tflops(device, args.precision)
    if peak:
        print("matmul peak: " + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peak.items()), file=sys.stderr)
    results = []
    for name in args.models:
        for _r in bench_model(name, args, device, peak, on_result=results.append):
            if args.json:  # rewritten after every result, so a run cut short keeps what it measured
                write_json(args.json, env, results, {"matmul_peak_tflops": peak})
    task_rows = []
    if args.task_models is not None:
        for name in args.task_models or TASK_DEFAULTS[device.type]:
            task_rows += bench_task_model(name, args, device)
            if args.json:
                write_json(args.json, env, results, {"matmul_peak_tflops": peak, "task_models": task_rows})
    print(table_header(device.type == "cuda"))
    for r in results:
        print(format_row(r))
    if task_rows:
        print("\n| vitkit model | task | size | batch | mode | precision | throughput | peak MiB |\n"
              "|---|---|---|---|---|---|---|---|")
        for t in task_rows:
            peak_cell = "" if t["peak_mib"] is None else f"{t['peak_mib']:.0f}"
            compiled = " +compile" if t["compiled"] else ""
            print(f"| {t['model']} | {t['task']} | {t['size']} | {t['batch']} | {t['mode']} | "
                  f"{t['precision']}{compiled} | {t['rate']:,.1f} {t['unit']} | {peak_cell} |")
    if args.json:
        write_json(args.json, env, results, {"matmul_peak_tflops": peak, "task_models": task_rows})


if __name__ == "__main__":
    main()
