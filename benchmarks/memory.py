"""Largest training batch of a vitkit ViT that fits in memory, with and without activation checkpointing.

CUDA: a real search. Each probe runs one full train step (bf16 autocast by default, fused AdamW); the batch
doubles until a step runs out of memory, then bisects down to `--granularity` images. Peak allocated memory
of the last successful step is reported.

CPU: a search by real steps would take the 2-core machine minutes per probe and ends in the kernel's OOM
killer rather than an exception, so each probe runs in a subprocess and reports its peak resident memory
(`ru_maxrss`); two small batches give memory = fixed + per_image x batch, solved for `--ram-gib`. With
`--verify`, one step at the predicted batch is run and its peak printed beside the budget.

    python benchmarks/memory.py --device cuda --json out.json             # ViT-B/16, bf16, both settings
    python benchmarks/memory.py --device cpu --ram-gib 24 --verify         # extrapolated, then checked once
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import vitkit


def train_step(model, opt, batch: int, device: torch.device, precision: str) -> None:
    size = model.img_size
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def build(name: str, checkpointing: bool, device: torch.device):
    model = vitkit.create_model(name).to(device)
    model.set_grad_checkpointing(checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return model, opt


def fits_cuda(model, opt, batch: int, device, precision: str) -> float | None:
    """Peak GiB of one step at `batch`, or None when it runs out of memory."""
    torch.cuda.reset_peak_memory_stats(device)
    try:
        train_step(model, opt, batch, device, precision)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()


def search_cuda(name: str, checkpointing: bool, device, precision: str, granularity: int, cap: int) -> dict:
    model, opt = build(name, checkpointing, device)
    fits_cuda(model, opt, 8, device, precision)  # optimiser state allocated before measuring
    good, bad, peak, batch = 0, None, None, 64
    start = time.perf_counter()
    while bad is None and batch <= cap:
        result = fits_cuda(model, opt, batch, device, precision)
        good, peak = (batch, result) if result is not None else (good, peak)
        bad = None if result is not None else batch
        batch *= 2
    while bad is not None and bad - good > granularity:
        mid = (good + bad) // 2 // granularity * granularity
        result = fits_cuda(model, opt, mid, device, precision)
        good, peak = (mid, result) if result is not None else (good, peak)
        bad = bad if result is not None else mid
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    return {"model": name, "checkpointing": checkpointing, "precision": precision, "max_batch": good,
            "capped": bad is None, "peak_gib": peak, "search_s": time.perf_counter() - start,
            "device_gib": torch.cuda.get_device_properties(device).total_memory / 2**30}


def probe_cpu(name: str, checkpointing: bool, batch: int, precision: str) -> float:
    """Peak resident GiB of a fresh process that runs one train step at `batch`."""
    code = (f"import sys; sys.argv=['m']; import benchmarks.memory as m, torch, resource; "
            f"model, opt = m.build({name!r}, {checkpointing}, torch.device('cpu')); "
            f"m.train_step(model, opt, {batch}, torch.device('cpu'), {precision!r}); "
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20  # KiB -> GiB


def search_cpu(name: str, checkpointing: bool, precision: str, ram_gib: float, small: tuple[int, int],
               verify: bool) -> dict:
    (b1, b2), start = small, time.perf_counter()
    m1, m2 = probe_cpu(name, checkpointing, b1, precision), probe_cpu(name, checkpointing, b2, precision)
    per_image = (m2 - m1) / (b2 - b1)
    fixed = m1 - per_image * b1
    predicted = int((ram_gib - fixed) / per_image)
    record = {"model": name, "checkpointing": checkpointing, "precision": precision, "ram_gib": ram_gib,
              "fixed_gib": fixed, "per_image_gib": per_image, "max_batch_predicted": predicted,
              "probes": {b1: m1, b2: m2}}
    print(json.dumps(record), flush=True)
    if verify:
        try:
            record["verified_peak_gib"] = probe_cpu(name, checkpointing, predicted, precision)
        except subprocess.CalledProcessError as err:  # the kernel's OOM killer: the budget was not free here
            record["verified_peak_gib"] = f"failed: {err.returncode} (memory in use by others: budget not free)"
    record["search_s"] = time.perf_counter() - start
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--granularity", type=int, default=16, help="CUDA: stop bisecting at this many images")
    p.add_argument("--cap", type=int, default=16384, help="CUDA: largest batch tried")
    p.add_argument("--ram-gib", type=float, default=24.0, help="CPU: the memory budget")
    p.add_argument("--small", type=int, nargs=2, default=(2, 6), help="CPU: the two probe batches")
    p.add_argument("--verify", action="store_true", help="CPU: run one step at the predicted batch")
    p.add_argument("--json", help="write the records here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    records = []
    for checkpointing in (False, True):
        if device.type == "cuda":
            rec = search_cuda(args.model, checkpointing, device, precision, args.granularity, args.cap)
            print(json.dumps(rec), flush=True)
        else:  # prints its record itself, before the (long) verification step
            rec = search_cpu(args.model, checkpointing, precision, args.ram_gib, tuple(args.small), args.verify)
        records.append(rec)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "vitkit": vitkit.__version__}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": records}, f, indent=2)


if __name__ == "__main__":
    main()
