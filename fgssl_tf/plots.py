"""PNG figures for reports and tools (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def confusion_matrix_png(matrix, class_names, path: str, title: str = "") -> str:
    """Counts with each row's share as the colour (rows: true class, columns: predicted)."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.9 * len(class_names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axes.text(
                j, i, str(matrix[i, j]), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black"
            )
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "confusion matrix (colour: share of the row)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return _save(figure, path)


def recall_bars_png(recalls, class_names, path: str, title: str = "") -> str:
    figure, axes = plt.subplots(figsize=(1.5 + 0.8 * len(class_names), 3.5))
    axes.bar(range(len(class_names)), recalls, color="tab:blue")
    for i, value in enumerate(recalls):
        axes.text(i, value + 0.02, f"{value:.2f}", ha="center")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_ylim(0.0, 1.1)
    axes.set_ylabel("recall")
    axes.set_title(title or "recall per class")
    return _save(figure, path)


def embedding_map_png(points, labels, class_names, path: str, title: str = "") -> str:
    """A 2-D map (t-SNE or UMAP) of embeddings, one colour per class."""
    points, labels = np.asarray(points), np.asarray(labels)
    figure, axes = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        chosen = labels == k
        axes.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=8,
            color=colours(k % colours.N),
            label=f"{name} ({int(chosen.sum())})",
        )
    axes.legend(markerscale=2, fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title)
    return _save(figure, path)


def lines_png(series: dict, path: str, title: str, xlabel: str, ylabel: str) -> str:
    """One line per name: {name: [(x, y), ...]}, x on a log scale (label fractions)."""
    figure, axes = plt.subplots(figsize=(8, 5))
    colours, markers = plt.get_cmap("tab20"), "osD^v<>ph*"
    for k, (name, points) in enumerate(series.items()):  # 20 colours x 10 markers: no two lines alike
        xs, ys = zip(*points)
        axes.plot(xs, ys, marker=markers[k % len(markers)], color=colours(k % colours.N), label=name)
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return _save(figure, path)
