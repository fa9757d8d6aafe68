"""Detectors trained from scratch on the embedded shapes scenes on CPU: how far they get in a fixed wall-time budget.

    python benchmarks/detection_shapes.py                                   # the DETR shapes config, 15 min cap
    python benchmarks/detection_shapes.py --configs configs/detection/shapes_detr_nano.yaml configs/detection/shapes_yolos_nano.yaml
    python benchmarks/detection_shapes.py --max-minutes 15 --json benchmarks/results/detection_shapes_cpu.json

Each config runs exactly as `python train.py fit --config <config> --test_after_fit true` would (same CLI, task,
data module and defaults; the scenes are generated under datasets/shapes on first use), with the Trainer's
`max_time` set to the budget minus a margin for testing, so the whole command (fit, then test of the best
checkpoint on the 200 held-out test scenes) stays within `--max-minutes`. Prints the validation AP50 per epoch,
pycocotools' table for the test split, and a summary row per config with the wall time of the whole run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from vitkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["configs/detection/shapes_detr_nano.yaml"]


def run(config: str, max_minutes: float, test_margin_s: float, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="vitkit-detection-"))
    budget = max(60.0, max_minutes * 60 - test_margin_s)
    d, rem = divmod(int(budget), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    args = ["fit", "--config", str(ROOT / config), "--trainer.default_root_dir", str(out), "--test_after_fit", "true",
            "--trainer.max_time", f"{d:02d}:{h:02d}:{m:02d}:{s:02d}", "--trainer.enable_progress_bar", "false", *extra]
    start = time.perf_counter()
    main(args)
    seconds = time.perf_counter() - start
    run_dir = next(out.glob("*/version_0"))
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    val = [(int(r["epoch"]), int(r["step"]), float(r["val/map_50"]), float(r["val/map"])) for r in rows if r.get("val/map_50")]
    test = next(r for r in rows if r.get("test/map"))
    return {
        "config": config, "wall_s": seconds, "epochs": val[-1][0] + 1 if val else 0, "steps": val[-1][1] + 1 if val else 0,
        "val": val, "test": {k.split("/", 1)[1]: float(v) for k, v in test.items() if k.startswith("test/") and v},
        "table": (run_dir / "coco_eval.txt").read_text(), "run_dir": str(run_dir),
    }


def summary(results: list[dict]) -> str:
    lines = ["| config | epochs (steps) | best val AP50 | test AP | test AP50 | test AP75 | test AR100 | wall time (fit + test) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        best = max((v[2] for v in r["val"]), default=float("nan"))
        t = r["test"]
        lines.append(f"| {Path(r['config']).name} | {r['epochs']} ({r['steps']}) | {best:.3f} | {t['map']:.3f} | "
                     f"{t['map_50']:.3f} | {t['map_75']:.3f} | {t['mar_100']:.3f} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="wall-time budget of each whole run")
    parser.add_argument("--test-margin", type=float, default=45.0, help="seconds kept for testing after fit")
    parser.add_argument("--json", type=Path, default=None, help="write every number (and the machine) here")
    parser.add_argument("extra", nargs="*", help="further CLI overrides, e.g. --trainer.max_epochs=30")
    args = parser.parse_args()
    results = []
    for config in args.configs:
        result = run(config, args.max_minutes, args.test_margin, args.extra)
        results.append(result)
        print(f"\n{config}: validation AP50 by epoch: " + ", ".join(f"{e}:{a:.3f}" for e, _, a, _ in result["val"]))
        print(f"test split (best checkpoint), pycocotools summary:\n{result['table']}")
    print("\n" + summary(results))
    if args.json:
        machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), "load_at_end": os.getloadavg()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main_cli()
