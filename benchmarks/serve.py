"""Load test of `vitkit serve` on localhost: requests/s and latency of the digits classifier over HTTP.

What it measures. The model of configs/classification/digits_speedrun.yaml (briefly trained on digits:
`--train-steps` optimiser steps, so its answers are not all one class) is saved as a Lightning checkpoint and,
when `vitkit export` is available, exported to ONNX. For each engine, `vitkit serve` runs as its own process
(as a user starts it), and `--clients` concurrent clients (httpx, asyncio) send `--requests` PNG uploads of real
digits (multipart field `file`) as fast as the answers come, after `--warmup` untimed ones. Reported per engine:
requests/s over the timed requests, p50 and p99 latency (send to full answer), and the batch sizes the server ran
(from /health). Rows: torch with micro-batching (`--max-batch 8`, 10 ms), torch without (`--max-batch 1`), and
onnxruntime with batching when an .onnx could be made.

Usage (from the repository root; ~1 min on 2 CPU cores):

    python benchmarks/serve.py                      # writes benchmarks/results/serve.json and prints a table
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/classification/digits_speedrun.yaml"


def make_checkpoint(out: Path, steps: int) -> Path:
    """The speedrun config's classifier after `steps` optimiser steps on digits, saved by Lightning."""
    import pytorch_lightning as pl

    from vitkit.data import ClassificationDataModule
    from vitkit.tasks import ImageClassifier

    cfg = yaml.safe_load(CONFIG.read_text())
    data = cfg["data"]["init_args"]
    pl.seed_everything(0)
    task = ImageClassifier(**{**cfg["model"]["init_args"], "warmup_epochs": 0}, img_size=data["img_size"])
    dm = ClassificationDataModule(**data)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
    trainer.fit(task, datamodule=dm)
    path = out / "digits_speedrun.ckpt"
    trainer.save_checkpoint(path)
    return path


def try_export(ckpt: Path) -> tuple[Path | None, str]:
    """An .onnx of the checkpoint through `vitkit export`, or None and why not."""
    try:
        import vitkit.export.runtime  # noqa: F401
    except ImportError as err:
        return None, f"vitkit.export.runtime not importable ({err})"
    onnx = ckpt.parent / "export" / "model.onnx"
    run = subprocess.run([sys.executable, "train.py", "export", "--ckpt", str(ckpt), "--format", "onnx",
                          "--dynamic", "batch", "--out", str(onnx.parent)], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0 or not onnx.is_file():
        return None, f"vitkit export failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}"
    return onnx, "ok"


def digit_pngs(n: int) -> list[bytes]:
    """`n` real digits (scikit-learn's 8x8, scaled to 0..255) as PNG bytes."""
    digits = load_digits()
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, timeout_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "train.py", "serve", "--ckpt", str(model), "--port", str(port), "--max-batch",
           str(max_batch), "--batch-timeout-ms", str(timeout_ms), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 120 s")


async def load(url: str, images: list[bytes], clients: int) -> list[float]:
    """Send every image once from `clients` concurrent workers; the latency of each request in seconds."""
    queue: asyncio.Queue = asyncio.Queue()
    for i, data in enumerate(images):
        queue.put_nowait((i, data))
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, data = queue.get_nowait()
            start = time.perf_counter()
            r = await client.post("/predict", files={"file": (f"{i}.png", data, "image/png")})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return latencies


def measure(name: str, model: Path, args, images: list[bytes], max_batch: int) -> dict:
    port = free_port()
    proc = start_server(model, port, max_batch, args.batch_timeout_ms)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(load(url, images[: args.warmup], args.clients))
        start = time.perf_counter()
        latencies = asyncio.run(load(url, images[: args.requests], args.clients))
        wall = time.perf_counter() - start
        health = httpx.get(f"{url}/health").json()
    finally:
        proc.terminate()
        proc.wait(30)
    ms = np.array(latencies) * 1000
    return {"engine": name, "format": health["format"], "max_batch": max_batch, "requests": len(latencies),
            "clients": args.clients, "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "batches": health["batches"]}


def table(rows: list[dict]) -> str:
    lines = ["| engine | --max-batch | requests/s | p50 ms | p99 ms | batches run (size: count, warm-up included) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batches"].items())
        lines.append(f"| {r['engine']} | {r['max_batch']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
                     f"| {sizes} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--batch-timeout-ms", type=float, default=10.0)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/serve.json"))
    args = p.parse_args()
    images = digit_pngs(max(args.requests, args.warmup))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args.train_steps)
        onnx, why = try_export(ckpt)
        rows = [measure("torch", ckpt, args, images, 8), measure("torch", ckpt, args, images, 1)]
        if onnx is not None:
            rows.append(measure("onnxruntime", onnx, args, images, 8))
        else:
            print(f"onnxruntime row skipped: {why}")
    result = {"machine": f"{os.cpu_count()} CPU cores", "model": "digits_speedrun (vit_nano_patch4_32, 16 px)",
              "onnx": why, "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
