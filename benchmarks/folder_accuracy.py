"""Does a user's own folder train as well as the embedded digits? The README command, with data flags only.

Writes two folders of PNG class folders, the layout a user brings:
- `digits`: scikit-learn's 8x8 digits, on the very train/val/test split the embedded run uses
  (`vitkit.data.write_image_folder`);
- `renders`: 28x28 grayscale digits drawn in the fonts matplotlib ships (DejaVu, STIX, Computer Modern),
  with random size, slant, rotation, stroke width, position, blur and noise: 3,500 train / 500 val / 1,000 test.

Each folder is trained by `python train.py fit --config <config> --data.init_args.dataset imagefolder
--data.init_args.root <folder>` (a subprocess, as a user runs it; the digits also without the data flags,
the embedded run), for each seed; the whole command is timed and its test accuracy read from the run's
metrics.csv. A logistic regression and an RBF-SVM on the raw pixels of the same split are printed beside.

    python benchmarks/folder_accuracy.py                                     # both folders, seeds 0 1 2
    python benchmarks/folder_accuracy.py --folders digits --seeds 0 --config configs/classification/vit_tiny_digits.yaml
    python benchmarks/folder_accuracy.py --json benchmarks/results/folder_accuracy_cpu.json
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/classification/digits_speedrun.yaml"
SPLITS = {"train": 3500, "val": 500, "test": 1000}


def write_digits(root: str) -> None:
    from vitkit.data import ClassificationDataModule, write_image_folder

    write_image_folder(ClassificationDataModule("digits"), root)


def _fonts() -> list[str]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSansMono", "DejaVuSansMono-Bold",
             "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralBol",
             "STIXGeneralItalic", "cmr10", "cmss10", "cmtt10", "cmb10"]
    return [str(folder / f"{n}.ttf") for n in names if (folder / f"{n}.ttf").is_file()]


def render_digit(digit: int, font: str, rng: np.random.Generator) -> Image.Image:
    """One 28x28 grayscale digit: drawn at 4x, rotated, sheared, thickened or thinned, shifted, then reduced."""
    big = Image.new("L", (112, 112))
    face = ImageFont.truetype(font, size=int(rng.integers(56, 84)))
    draw = ImageDraw.Draw(big)
    draw.text((56 + rng.integers(-8, 9), 56 + rng.integers(-8, 9)), str(digit), fill=255, font=face, anchor="mm")
    shear = rng.uniform(-0.3, 0.3)
    big = big.transform(big.size, Image.AFFINE, (1, shear, -shear * 56, 0, 1, 0), resample=Image.BILINEAR)
    big = big.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    stroke = int(rng.integers(-1, 3))  # thinner, as drawn, or up to two steps bolder
    for _ in range(abs(stroke)):
        big = big.filter(ImageFilter.MaxFilter(5) if stroke > 0 else ImageFilter.MinFilter(3))
    small = big.resize((28, 28), Image.LANCZOS).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.6)))
    pixels = np.asarray(small, dtype=np.float32) + rng.normal(0, rng.uniform(0, 12), (28, 28))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def write_renders(root: str, seed: int = 0) -> None:
    rng, fonts = np.random.default_rng(seed), _fonts()
    for split, n in SPLITS.items():
        for i in range(n):
            digit = i % 10
            folder = os.path.join(root, split, str(digit))
            os.makedirs(folder, exist_ok=True)
            render_digit(digit, fonts[int(rng.integers(len(fonts)))], rng).save(os.path.join(folder, f"{i:05d}.png"))


FOLDERS = {"digits": write_digits, "renders": write_renders}


def load_pixels(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels (N, H*W) in 0..1 and labels of one split folder, for the classic baselines."""
    classes = sorted(os.listdir(os.path.join(root, "train")))
    x, y = [], []
    for label, name in enumerate(classes):
        for path in sorted(glob.glob(os.path.join(root, split, name, "*.png"))):
            x.append(np.asarray(Image.open(path).convert("L"), dtype=np.float32).ravel() / 255.0)
            y.append(label)
    return np.stack(x), np.array(y)


def baselines(root: str) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    (x_train, y_train), (x_test, y_test) = load_pixels(root, "train"), load_pixels(root, "test")
    rows = []
    for name, clf in (("logistic regression (raw pixels)", LogisticRegression(max_iter=5000)),
                      ("RBF-SVM (raw pixels, gamma=scale)", SVC())):
        start = time.perf_counter()
        clf.fit(x_train, y_train)
        acc = float((clf.predict(x_test) == y_test).mean())
        rows.append({"method": name, "test_acc": acc, "seconds": time.perf_counter() - start})
    return rows


def train(config: str, root: str | None, seed: int, runs: str) -> dict:
    """`train.py fit` as a user runs it; returns its wall time and the test accuracy of its run folder."""
    name = f"{'embedded' if root is None else os.path.basename(root)}_s{seed}"
    cmd = [sys.executable, "train.py", "fit", "--config", config, "--seed_everything", str(seed),
           "--trainer.default_root_dir", runs, "--run_name", name, "--trainer.enable_progress_bar", "false"]
    if root is not None:
        cmd += ["--data.init_args.dataset", "imagefolder", "--data.init_args.root", root]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    versions = glob.glob(os.path.join(runs, name, "version_*", "metrics.csv"))  # the newest: --out may be reused
    metrics = max(versions, key=lambda path: int(Path(path).parent.name.split("_")[1]))
    with open(metrics) as f:
        test = [float(r["test/acc"]) for r in csv.DictReader(f) if r.get("test/acc")]
    chosen = [line for line in done.stderr.splitlines() if "Default pipeline" in line]
    return {"data": name.rsplit("_s", 1)[0], "seed": seed, "test_acc": test[-1], "wall_s": wall,
            "pipeline": chosen[0].split("Default pipeline ", 1)[1].split(":", 1)[0] if chosen else "embedded"}


def table(runs: list[dict], classic: dict[str, list[dict]]) -> str:
    lines = ["| data | method | test accuracy (mean ± std) | seeds | wall time / run (median, range) |",
             "| --- | --- | --- | --- | --- |"]
    for data in dict.fromkeys(r["data"] for r in runs):
        rs = [r for r in runs if r["data"] == data]
        accs, walls = [r["test_acc"] for r in rs], [r["wall_s"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        method = "vitkit, embedded" if data == "embedded" else f"vitkit, folder ({rs[0]['pipeline']})"
        lines.append(f"| {data} | {method} | {statistics.mean(accs):.2%} ± {std:.2%} "
                     f"(min {min(accs):.2%}) | {len(rs)} | "
                     f"{statistics.median(walls):.0f} s ({min(walls):.0f}-{max(walls):.0f}) |")
        for row in classic.get(data, []):
            lines.append(f"| {data} | {row['method']} | {row['test_acc']:.2%} | — | {row['seconds']:.1f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folders", nargs="+", choices=list(FOLDERS), default=list(FOLDERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the config the README command trains")
    p.add_argument("--no-embedded", action="store_true", help="skip the embedded digits run")
    p.add_argument("--out", help="keep the folders and runs here (default: a temporary folder)")
    p.add_argument("--json", help="write the raw results here")
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="vitkit-folders-")
    runs, results, classic = os.path.join(out, "runs"), [], {}
    for folder in args.folders:
        root = os.path.join(out, folder)
        if not os.path.isdir(os.path.join(root, "train")):
            FOLDERS[folder](root)
        classic[folder] = baselines(root)
        print(json.dumps({"data": folder, "baselines": classic[folder]}), flush=True)
    for seed in args.seeds:  # interleaved by seed, so a slower stretch of a shared machine hits every row alike
        todo = ([None] if "digits" in args.folders and not args.no_embedded else []) + args.folders
        for folder in todo:
            results.append(train(args.config, None if folder is None else os.path.join(out, folder), seed, runs))
            print(json.dumps(results[-1]), flush=True)
    if "digits" in classic:
        classic["embedded"] = []
    print(f"\n{args.config}, {os.cpu_count()} CPU cores\n")
    print(table(results, classic))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "runs": results, "baselines": classic, "argv": sys.argv[1:]}, f, indent=1)


if __name__ == "__main__":
    main()
