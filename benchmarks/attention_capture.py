"""What attention capture costs: a ViT with capture off, with capture on, and with no capture hooks at all.

What it measures. For each model config, three variants share one set of weights:

- `plain`: every `Attention.forward` replaced by a copy with the capture branches taken out (projections,
  fused SDPA, output projection: nothing else), i.e. what the model would cost if capture did not exist;
- `off`: vitkit as shipped, capture off (the default);
- `on`: inside `vitkit.nn.capture_attention(model)`: explicit softmax attention, weights kept per layer.

First the outputs are compared: `off` must equal `plain` exactly and `on` must match within float
rounding (the script stops otherwise), and the ATen ops of one forward of `off` and `plain` are recorded
with torch.profiler and compared (same ops, same order: capture off adds no tensor work at all).
Then per mode (`infer`: `eval()`, forward under `inference_mode`;
`train`: forward, cross-entropy, backward) the variants are timed interleaved: in each of `--rounds` rounds
each variant runs `--steps` timed steps, in an order that rotates every round, so a noisy machine's drift
falls on all three alike. Reported: the median ms per batch of each, and off÷plain and on÷off as the median
of the per-round ratios (min-max over rounds), plus the memory the captured weights hold.

Usage (from the repository root; ~4 min on 2 CPU cores):

    python benchmarks/attention_capture.py                 # ViT-S/16 224px batch 8, ViT-Ti/4 32px batch 64
    python benchmarks/attention_capture.py --quick         # small configs, ~30 s
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import types

import torch
import torch.nn.functional as F

import vitkit
from vitkit.nn import Attention, capture_attention

try:  # the SDPA backend choice Attention uses, when this version has one
    from vitkit.nn.attention import _sdpa_context
except ImportError:  # pragma: no cover
    _sdpa_context = contextlib.nullcontext

CONFIGS = {
    "default": [("vit_small_patch16_224", 224, 8), ("vit_tiny_patch4_32", 32, 64)],
    "quick": [("vit_tiny_patch16_224", 224, 4), ("vit_nano_patch4_32", 32, 32)],
}
VARIANTS = ("plain", "off", "on")


def plain_forward(self, x, context=None, attn_mask=None, is_causal=False, cache=None, num_queries=None):
    """Attention.forward without any capture check: project, fused SDPA, project back."""
    B, N, C = x.shape
    N = N if num_queries is None else min(num_queries, N)
    q, k, v = self._project(x, context, cache, num_queries)
    q, k = self.q_norm(q), self.k_norm(k)
    with _sdpa_context():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal)
    return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


def without_hooks(model: torch.nn.Module) -> torch.nn.Module:
    """The same module with every Attention's forward swapped for `plain_forward` (weights shared)."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(plain_forward, m)
    return model


def build(name: str, img: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = vitkit.create_model(name, num_classes=10, img_size=img)
    plain = vitkit.create_model(name, num_classes=10, img_size=img)
    plain.load_state_dict(model.state_dict())
    return {"plain": without_hooks(plain), "off": model, "on": model}


def check_outputs(models: dict, x: torch.Tensor) -> tuple[float, float, int]:
    """(max |off - plain|, max |on - off|, bytes the captured weights hold)."""
    with torch.inference_mode():
        plain, off = models["plain"].eval()(x), models["off"].eval()(x)
        with capture_attention(models["on"]) as attns:
            on = models["on"](x)
        held = sum(a.attn_weights.numel() * a.attn_weights.element_size() for a in attns)
    d_off, d_on = (off - plain).abs().max().item(), (on - off).abs().max().item()
    if d_off != 0 or d_on > 1e-4:
        raise SystemExit(f"outputs differ: off vs plain {d_off}, on vs off {d_on}")
    return d_off, d_on, held


def aten_ops(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """The ATen ops one inference forward runs, in order (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


def step_fn(models: dict, variant: str, mode: str, x: torch.Tensor, y: torch.Tensor):
    model = models[variant]

    def infer():
        with torch.inference_mode():
            model(x)

    def train():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    body = infer if mode == "infer" else train

    def run():
        with capture_attention(model) if variant == "on" else contextlib.nullcontext():
            body()

    return run


def time_modes(models: dict, mode: str, x, y, rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    for m in models.values():
        m.train(mode == "train")
    fns = {v: step_fn(models, v, mode, x, y) for v in VARIANTS}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for v in order:
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                fns[v]()
                times.append(time.perf_counter() - t)
            per_round[v].append(statistics.median(times))
    return per_round


def ratio(per_round: dict, a: str, b: str) -> str:
    r = [x / y for x, y in zip(per_round[a], per_round[b])]
    return f"{statistics.median(r):.3f} ({min(r):.2f}–{max(r):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    rows = []
    for name, img, batch in CONFIGS["quick" if args.quick else "default"]:
        models = build(name, img)
        x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
        _, d_on, held = check_outputs(models, x)
        ops_plain, ops_off = aten_ops(models["plain"], x[:2]), aten_ops(models["off"], x[:2])
        same = "the same" if ops_plain == ops_off else "DIFFERENT"
        print(f"{name}: capture off runs {same} {len(ops_off)} ATen ops per forward as the model without hooks "
              f"({len(ops_plain)}); outputs: off == plain exactly, max |on - off| = {d_on:.1e}", flush=True)
        for mode in args.modes:
            t = time_modes(models, mode, x, y, args.rounds, args.steps, args.warmup)
            ms = {v: 1000 * statistics.median(t[v]) for v in VARIANTS}
            rows.append(f"| {name} | {img} | {batch} | {mode} | {ms['plain']:.1f} | {ms['off']:.1f} | {ms['on']:.1f} | "
                        f"{ratio(t, 'off', 'plain')} | {ratio(t, 'on', 'off')} | {held / 2**20:.1f} MiB |")
            print(rows[-1], flush=True)
    print("\n| model | img | batch | mode | plain ms | off ms | on ms | off÷plain (min–max) | on÷off (min–max) "
          "| weights held when on |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))

if __name__ == "__main__":
    main()
