"""Training report artifacts: confusion matrix, per-breed accuracy, misclassified images, learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from pawfinder.breeds import by_label


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def write_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], folder: Path) -> list[Path]:
    """``confusion_matrix.csv`` (rows = truth) and a row-normalised ``confusion_matrix.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "confusion_matrix.csv"
    pd.DataFrame(matrix, index=list(labels), columns=list(labels)).to_csv(csv_path, index_label="true\\predicted")
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(12, 11))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    png_path = folder / "confusion_matrix.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [csv_path, png_path]


def per_breed_accuracy(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """One row per breed present in ``truth``: label, name, species, images, correct, accuracy (worst first)."""
    rows = []
    for index in np.unique(truth):
        breed = by_label(labels[index])
        mask = truth == index
        correct = int((predicted[mask] == index).sum())
        rows.append((breed.label, breed.name, breed.species, int(mask.sum()), correct, correct / int(mask.sum())))
    columns = ["label", "breed", "species", "images", "correct", "accuracy"]
    return pd.DataFrame(rows, columns=columns).sort_values(["accuracy", "label"]).reset_index(drop=True)


def misclassified_grid(
    images: Sequence[Image.Image],
    truth: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    path: Path,
    *,
    columns: int = 6,
) -> Path:
    """A grid of (mis)classified images titled ``true -> predicted (confidence)``; a note when there are none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.4, rows * 2.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not images:
        axes[0][0].text(0, 0.5, "no misclassified validation images", fontsize=10)
    for ax, image, true, pred, conf in zip(axes.flat, images, truth, predicted, confidence, strict=False):
        ax.imshow(image)
        ax.set_title(f"{true}\n-> {pred} ({conf:.2f})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def learning_curves(history: Sequence[dict[str, float | str]], path: Path) -> Path:
    """Loss and accuracy (train and val) and the learning rate per epoch, the stages one after the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(history))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset = 0
    for stage, part in frame.groupby("stage", sort=False) if not frame.empty else []:
        x = part["epoch"] + offset
        for metric, ax in (("loss", axes[0]), ("accuracy", axes[1])):
            ax.plot(x, part[f"train_{metric}"], "--", label=f"{stage} train")
            ax.plot(x, part[f"val_{metric}"], "-", label=f"{stage} val")
            ax.set_title(metric)
        axes[2].plot(x, part["lr"], label=str(stage))
        axes[2].set_title("learning rate (at epoch start)")
        if offset:
            for ax in axes:
                ax.axvline(offset + 0.5, color="grey", linewidth=0.8)
        offset += int(part["epoch"].max())
    for ax in axes:
        ax.set_xlabel("epoch (stages in order)")
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
