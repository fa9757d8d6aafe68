"""Accuracy targets of the text path, each trained and tested exactly as the README command does
(`python train.py fit --config ...` in a subprocess), with the wall time of the whole command:

    translation  configs/seq2seq/numbers_tiny.yaml          test/exact_match >= 0.95 in <= 10 min; report test/bleu
    captions     configs/captioning/shapes_captions.yaml test/bleu4 >= 0.5 (and test/cider)
    vqa          configs/vqa/shapes_vqa.yaml      test/vqa_acc >= 0.90 (encoder: the captions run's)

    python benchmarks/text_tasks.py                        # all three (captions before vqa, which starts from it)
    python benchmarks/text_tasks.py --tasks translation    # one of them
    python benchmarks/text_tasks.py --tasks translation --extra --trainer.max_steps 500   # a shorter variant

Run folders go to runs/bench_text/<config name>/version_N; the table is printed at the end (and written
with --json). On a shared machine, serialise with other long runs: `flock /tmp/vitkit_cpu.lock python ...`.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "translation": ("configs/seq2seq/numbers_tiny.yaml", {"test/exact_match": 0.95}, ["test/bleu"], 600),
    "captions": ("configs/captioning/shapes_captions.yaml", {"test/bleu4": 0.5}, ["test/cider"], None),
    "vqa": ("configs/vqa/shapes_vqa.yaml", {"test/vqa_acc": 0.90},
            ["test/vqa_acc_yes_no", "test/vqa_acc_number", "test/vqa_acc_other"], None),
}


def newest_run(root: Path, name: str) -> Path:
    runs = sorted((root / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not runs:
        raise SystemExit(f"no run folder under {root / name}")
    return runs[-1]


def test_metrics(run: Path) -> dict[str, float]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for r in rows for k, v in r.items() if k and k.startswith("test/") and v}


def start_from(task: str, root: Path) -> list[str]:
    """VQA starts from the captioner's encoder (as its config does): the newest captions run under `root`."""
    if task != "vqa":
        return []
    ckpt = newest_run(root, "shapes_captions") / "checkpoints" / "last.ckpt"
    return ["--model.init_args.pretrained", str(ckpt)]


def run_task(task: str, root: Path, extra: list[str]) -> dict:
    config, targets, also, limit_s = TASKS[task]
    cmd = [sys.executable, "train.py", "fit", "--config", config, "--trainer.default_root_dir", str(root),
           "--trainer.enable_progress_bar", "false", *start_from(task, root), *extra]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    metrics = test_metrics(newest_run(root, Path(config).stem))
    met = all(metrics.get(k, float("-inf")) >= v for k, v in targets.items()) and (limit_s is None or wall <= limit_s)
    return {"task": task, "config": config, "wall_min": round(wall / 60, 2), "metrics": metrics, "targets": targets,
            "time_limit_min": None if limit_s is None else limit_s / 60, "met": met, "report": also}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--root", default="runs/bench_text", help="trainer.default_root_dir of the runs")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further CLI arguments for every run")
    a = p.parse_args()
    results = [run_task(t, Path(a.root), a.extra) for t in a.tasks]
    print("\n| task | config | wall time (min) | target | result | met |")
    print("|---|---|---|---|---|---|")
    for r in results:
        target = ", ".join(f"{k} >= {v}" for k, v in r["targets"].items())
        if r["time_limit_min"]:
            target += f" in <= {r['time_limit_min']:.0f} min"
        shown = {k: v for k, v in r["metrics"].items() if k in r["targets"] or k in r["report"]}
        result = ", ".join(f"{k} = {v:.4g}" for k, v in shown.items())
        print(f"| {r['task']} | `{r['config']}` | {r['wall_min']:.1f} | {target} | {result} | "
              f"{'yes' if r['met'] else 'NO'} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
