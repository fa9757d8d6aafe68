"""How far a small ViT gets on scikit-learn's 8x8 digits (1,258 training images), trained from scratch on CPU.

    python benchmarks/digits_accuracy.py                      # the 32 px config and the longer recipe, 3 seeds
    python benchmarks/digits_accuracy.py --recipes readme --seeds 0
    python benchmarks/digits_accuracy.py --recipes speedrun speedrun-no-stem-24ep --seeds 0 1 2   # the speedrun search
    python benchmarks/digits_accuracy.py --json benchmarks/results/digits_cpu.json

The `speedrun*` recipes are `configs/classification/digits_speedrun.yaml` (read from the file) with one change
each: the steps of the search told in benchmarks/README.md.

Each recipe is trained with Lightning exactly as `train.py fit` would (same task, data module and
defaults), then tested on the fixed held-out test split (359 images). Prints a markdown table of test
accuracy (mean ± std over seeds) and wall-clock fit time. The classic RBF-SVM reference on the same split
is printed alongside.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

from vitkit.data import ClassificationDataModule
from vitkit.tasks import ImageClassifier

MEAN_POOL = {"global_pool": "avg", "class_token": False}
SPEEDRUN = Path(__file__).resolve().parents[1] / "configs/classification/digits_speedrun.yaml"


def from_config(path: Path) -> dict:
    """A recipe (model, model_kwargs, task kwargs, data kwargs, epochs) from a classification config."""
    cfg = yaml.safe_load(path.read_text())
    task = dict(cfg["model"]["init_args"])
    data = {k: v for k, v in cfg["data"]["init_args"].items() if k in ("img_size", "batch_size")}
    return {"model": task.pop("model"), "model_kw": task.pop("model_kwargs", {}), "task_kw": task, "data_kw": data,
            "epochs": cfg["trainer"]["max_epochs"]}


def variant(base: dict, epochs: int | None = None, drop: tuple[str, ...] = (), **changes) -> dict:
    """`base` with model/task keyword changes (a key in `drop` removed from the model's)."""
    model_kw = {k: v for k, v in base["model_kw"].items() if k not in drop}
    task_kw = dict(base["task_kw"])
    for key, value in changes.items():
        (task_kw if key in ("lr", "warmup_epochs", "ema_decay", "label_smoothing") else model_kw)[key] = value
    return {**base, "model_kw": model_kw, "task_kw": task_kw, "epochs": epochs or base["epochs"]}


def _recipes() -> dict[str, dict]:
    tiny32 = {"model": "vit_tiny_patch4_32", "data_kw": {"img_size": 32, "batch_size": 64}}
    speedrun = from_config(SPEEDRUN)
    return {
        # configs/classification/vit_tiny_digits.yaml
        "readme": {**tiny32, "model_kw": {"depth": 6, **MEAN_POOL}, "task_kw": {"lr": 1e-3}, "epochs": 30},
        # the same ViT trained longer, with stochastic depth
        "long": {**tiny32, "model_kw": {"depth": 6, "drop_path_rate": 0.1, **MEAN_POOL}, "task_kw": {"lr": 1e-3},
                 "epochs": 100},
        "speedrun": speedrun,
        "speedrun-24ep": variant(speedrun, epochs=24),
        "speedrun-no-stem-24ep": variant(speedrun, epochs=24, drop=("stem_channels",)),
        "speedrun-no-stem-28ep": variant(speedrun, epochs=28, drop=("stem_channels",)),
        "speedrun-no-stem-lr2e-3-30ep": variant(speedrun, epochs=30, drop=("stem_channels",), lr=2e-3),
        "speedrun-no-stem-drop-path-24ep": variant(speedrun, epochs=24, drop=("stem_channels",), drop_path_rate=0.1),
        "speedrun-no-stem-ema-24ep": variant(speedrun, epochs=24, drop=("stem_channels",), ema_decay=0.998),
    }


RECIPES = _recipes()


def run_recipe(name: str, seed: int) -> dict:
    r = RECIPES[name]
    pl.seed_everything(seed, workers=True)
    dm = ClassificationDataModule(dataset="digits", **r["data_kw"])
    task = ImageClassifier(r["model"], num_classes=10, img_size=dm.hparams.img_size, model_kwargs=r["model_kw"],
                           **r["task_kw"])
    epochs = r["epochs"]
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tempfile.mkdtemp(prefix="vitkit-digits-"))
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    seconds = time.perf_counter() - start
    test = trainer.test(task, datamodule=dm, verbose=False)[0]
    params = sum(p.numel() for p in task.model.parameters())
    return {"recipe": name, "seed": seed, "epochs": epochs, "test_acc": test["test/acc"], "fit_s": seconds,
            "params": params}


def svm_reference() -> float:
    """RBF-SVM (scikit-learn defaults, gamma=0.001 as in its digits example) on the same train/test split."""
    from sklearn.svm import SVC

    dm = ClassificationDataModule(dataset="digits")
    images, labels = _digits_arrays()
    idx = dm._digits_indices
    x = images.reshape(len(images), -1) / 255.0 * 16.0
    clf = SVC(gamma=0.001).fit(x[idx["train"]], labels[idx["train"]])
    return float((clf.predict(x[idx["test"]]) == labels[idx["test"]]).mean())


def _digits_arrays():
    from vitkit.data.classification import _digits_arrays as arrays

    return arrays()


def table(results: list[dict], svm: float) -> str:
    lines = ["| recipe | epochs | params | test accuracy (mean ± std) | seeds | fit time / run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == name]
        accs = [r["test_acc"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {rs[0]['epochs']} | {rs[0]['params'] / 1e6:.2f} M | "
                     f"{statistics.mean(accs):.2%} ± {std:.2%} | "
                     f"{len(rs)} | {statistics.mean(r['fit_s'] for r in rs):.0f} s |")
    lines.append(f"| RBF-SVM (reference) | — | — | {svm:.2%} | — | — |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["readme", "long"], choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    results = []
    for name in args.recipes:
        for seed in args.seeds:
            results.append(run_recipe(name, seed))
            print(json.dumps(results[-1]), flush=True)
    svm = svm_reference()
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(table(results, svm))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "svm": svm, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
