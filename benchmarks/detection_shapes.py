"""Detectors trained from scratch on the embedded shapes scenes on CPU, within a fixed wall-time budget.

    python benchmarks/detection_shapes.py                     # configs/detection/shapes_detr_nano.yaml, 15 min
    python benchmarks/detection_shapes.py --max-minutes 15 --json benchmarks/results/detection_shapes_cpu.json
    python benchmarks/detection_shapes.py --configs configs/detection/shapes_yolos_nano.yaml --no-calibrate

Each config runs exactly as `python train.py fit --config <config> --test_after_fit true` would (same CLI, task,
data module and defaults; the scenes are generated under datasets/shapes on first use). On a shared machine the
speed of a step varies several-fold, so first a calibration measures it (25 training steps of the same model
and data): the number of epochs is then cut, if needed, to what fits the budget (a multiple of the config's
`check_val_every_n_epoch`, so the last epoch is validated and the schedule anneals fully), and the Trainer's
`max_time` caps the fit in case the machine slows down later. The wall time reported is that of everything:
calibration, fit and the test of the best checkpoint on the 200 held-out test scenes. Prints the validation
AP50 per validation, pycocotools' table for the test split, and a summary row per config.
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

import pytorch_lightning as pl
import torch

from vitkit.cli import VitkitCLI, main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["configs/detection/shapes_detr_nano.yaml"]


class _StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.times.append(time.perf_counter())


def calibrate(config: str, extra: list[str], steps: int = 25) -> tuple[float, int, int, int]:
    """Seconds per training step (median of steps 6..), steps per epoch, the config's epochs and validation
    interval, from a short fit of the config's own task and data module (no validation, nothing written)."""
    cli = VitkitCLI(args=["--config", str(ROOT / config), *extra, "--trainer.logger", "false",
                          "--trainer.default_root_dir", tempfile.mkdtemp(prefix="vitkit-calibrate-")], run=False)
    timer = _StepTimer()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
                         gradient_clip_val=cli.config.trainer.gradient_clip_val)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    gaps = sorted(b - a for a, b in zip(timer.times[5:], timer.times[6:]))
    per_epoch = len(cli.datamodule.train_dataloader())
    return (gaps[len(gaps) // 2], per_epoch, cli.config.trainer.max_epochs,
            cli.config.trainer.check_val_every_n_epoch or 1)


def fit_epochs(seconds: float, step_s: float, per_epoch: int, epochs: int, every: int) -> int:
    """The most epochs (a multiple of `every`, at most `epochs`) whose training and validation fit `seconds`."""
    epoch_s = per_epoch * step_s * 1.05 + 7 * step_s / every  # + validation: 7 batches forward, every `every` epochs
    fit = min(epochs, int(seconds / epoch_s))
    return max(every, fit - fit % every)


def run(config: str, max_minutes: float, test_margin_s: float, extra: list[str], calibrate_first: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="vitkit-detection-"))
    start = time.perf_counter()
    args = ["--config", str(ROOT / config), "--trainer.default_root_dir", str(out), "--test_after_fit", "true",
            "--trainer.enable_progress_bar", "false", *extra]
    plan = {}
    if calibrate_first:
        step_s, per_epoch, epochs, every = calibrate(config, extra)
        left = max_minutes * 60 - (time.perf_counter() - start) - test_margin_s
        plan = {"step_s": step_s, "steps_per_epoch": per_epoch, "config_epochs": epochs,
                "epochs": fit_epochs(left, step_s, per_epoch, epochs, every)}
        args += ["--trainer.max_epochs", str(plan["epochs"])]
        print(f"calibration: {step_s:.3f} s/step, {per_epoch} steps/epoch -> {plan['epochs']} of {epochs} epochs")
    left = max(60.0, max_minutes * 60 - (time.perf_counter() - start) - test_margin_s)
    args += ["--trainer.max_time", time.strftime("00:%H:%M:%S", time.gmtime(left))]
    main(["fit", *args])
    seconds = time.perf_counter() - start
    run_dir = next(out.glob("*/version_0"))
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    val = [(int(r["epoch"]), int(r["step"]), float(r["val/map_50"]), float(r["val/map"]))
           for r in rows if r.get("val/map_50")]
    test = next(r for r in rows if r.get("test/map"))
    return {
        "config": config, "wall_s": seconds, "plan": plan, "epochs": val[-1][0] + 1 if val else 0,
        "steps": val[-1][1] + 1 if val else 0, "val": val,
        "test": {k.split("/", 1)[1]: float(v) for k, v in test.items() if k.startswith("test/") and v},
        "table": (run_dir / "coco_eval.txt").read_text(), "run_dir": str(run_dir),
    }


def summary(results: list[dict]) -> str:
    lines = ["| config | epochs (steps) | best val AP50 | test AP | test AP50 | test AP75 | test AR100 "
             "| wall time (fit + test) |",
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
    parser.add_argument("--test-margin", type=float, default=60.0, help="seconds kept for start-up and testing")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="keep the config's epochs (the fit still stops at the budget)")
    parser.add_argument("--json", type=Path, default=None, help="write every number (and the machine) here")
    parser.add_argument("extra", nargs="*", help="further CLI overrides, e.g. --trainer.max_epochs=30")
    args = parser.parse_args()
    results = []
    for config in args.configs:
        result = run(config, args.max_minutes, args.test_margin, args.extra, args.calibrate)
        results.append(result)
        print(f"\n{config}: validation AP50 by epoch: " + ", ".join(f"{e}:{a:.3f}" for e, _, a, _ in result["val"]))
        print(f"wall time {result['wall_s'] / 60:.1f} min (calibration, fit and test)")
        print(f"test split (best checkpoint), pycocotools summary:\n{result['table']}")
    print("\n" + summary(results))
    if args.json:
        machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "date": time.strftime("%Y-%m-%d %H:%M"), "load_at_end": os.getloadavg()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main_cli()
