"""Reports people look at after `test`: a per-class accuracy table (terminal + CSV) and a confusion-matrix PNG."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..viz import pyplot, save_figure


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Recall per class from a confusion matrix (rows: true class, columns: predicted); NaN for absent classes."""
    support = matrix.sum(dim=1).double()
    return matrix.diagonal().double() / support.where(support > 0, torch.tensor(float("nan"), dtype=torch.double))


def per_class_table(matrix: torch.Tensor, class_names: list[str], csv_path: Path | None = None) -> Table:
    """Print (and optionally save as CSV) each class's support, correct count and accuracy."""
    acc = per_class_accuracy(matrix)
    support, correct = matrix.sum(dim=1).tolist(), matrix.diagonal().tolist()
    table = Table(title="Per-class test accuracy")
    for col, justify in (("class", "left"), ("support", "right"), ("correct", "right"), ("accuracy", "right")):
        table.add_column(col, justify=justify)
    rows = []
    for name, n, c, a in zip(class_names, support, correct, acc.tolist()):
        rows.append((name, int(n), int(c), a))
        table.add_row(name, str(int(n)), str(int(c)), "—" if a != a else f"{a:.2%}")
    Console().print(table)
    if csv_path is not None:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "support", "correct", "accuracy"])
            w.writerows(rows)
    return table


def save_confusion_matrix(matrix: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix as a PNG heatmap, with counts written in the cells when it is small."""
    plt = pyplot()

    m = matrix.double()
    norm = (m / m.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    n = len(class_names)
    size = min(2 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90 if n > 12 else 0)
        ax.set_yticks(range(n), class_names)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if m[i, j] > 0:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = m.diagonal().sum() / m.sum().clamp(min=1)
    ax.set_title(f"Confusion matrix (test accuracy {acc:.2%})")
    return save_figure(fig, path)
