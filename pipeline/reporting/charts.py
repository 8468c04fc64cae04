"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: reports are written on servers and in CI
# Labels are user data (class names, backend names): "$" must stay a dollar sign, not start mathtext
# (an unbalanced "$x^$" would otherwise abort the report).
matplotlib.rcParams["text.parse_math"] = False

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

IGNORE_COLOUR = (0, 0, 0)


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, distinct for up to 20 classes; background stays dark grey."""
    cmap = plt.get_cmap("tab20" if num_classes > 10 else "tab10")
    colours = np.array([cmap(i % cmap.N)[:3] for i in range(num_classes)]) * 255
    colours[0] = (64, 64, 64)
    return colours.astype(np.uint8)


def colourise(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours (ignored pixels black)."""
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    valid = (mask != ignore_index) & (mask >= 0) & (mask < len(palette))
    out[valid] = palette[mask[valid]]
    return out


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """Loss (train solid, val dashed) and val mIoU against the share of each model's training done,
    one colour per trained model: models trained for 10 and for 200 epochs share one axis."""
    figure, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for index, (label, rows) in enumerate(histories.items()):
        colour = f"C{index}"
        epochs = max((row["epoch"] for row in rows), default=1)
        progress = [100.0 * row["epoch"] / epochs for row in rows]
        marker = "o" if len(rows) <= 40 else ""  # a marker per epoch hides a long run's line
        loss_ax.plot(progress, [row.get("loss") for row in rows], f"-{marker}", color=colour, label=f"{label} (train)")
        evaluated = [row for row in rows if "val_loss" in row]  # train.eval_every may skip epochs
        val_progress = [100.0 * row["epoch"] / epochs for row in evaluated]
        loss_ax.plot(val_progress, [row["val_loss"] for row in evaluated], "--s", color=colour, label=f"{label} (val)")
        miou_ax.plot(val_progress, [row.get("val_miou") for row in evaluated], "-o", color=colour,
                     label=f"{label} ({epochs} epochs)")
    loss_ax.set(title="loss", xlabel="% of training (epoch / epochs)", ylabel="loss")
    miou_ax.set(title="val mIoU", xlabel="% of training (epoch / epochs)", ylabel="mIoU %")
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlim(0, 102)
    return png_bytes(figure)


def per_class_bars(class_names: Sequence[str], columns: Mapping[str, Mapping[str, float | None]]) -> bytes:
    """Grouped bars: per-class IoU (%) of every model / backend; absent classes are left empty."""
    names = list(class_names)
    width = 0.8 / max(len(columns), 1)
    figure, ax = plt.subplots(figsize=(max(8, 0.9 * len(names) * max(1, len(columns) / 3)), 4.2))
    x = np.arange(len(names))
    for index, (label, ious) in enumerate(columns.items()):
        values = [np.nan if ious.get(name) is None else ious[name] for name in names]
        ax.bar(x + (index - (len(columns) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="IoU %", title="per-class IoU on the val split", ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(columns), 4))
    return png_bytes(figure)


# Past this many points only the frontier's are labelled: a method x backend sweep has dozens.
_MAX_LABELLED_POINTS = 12


def latency_vs_miou(points: Mapping[str, tuple[float, float]], front: Collection[str] = (),
                    metric_label: str = "val mIoU %") -> bytes:
    """One point per deployment: p50 latency (x, ms) against the task metric (y, %). Points named
    in ``front`` (the Pareto frontier) are ringed and joined by the frontier's staircase."""
    crowded = len(points) > _MAX_LABELLED_POINTS
    fontsize = 8 if crowded else 9
    figure, ax = plt.subplots(figsize=(8.5, 5.2) if crowded else (6.5, 4.2))
    for index, (label, (latency, miou)) in enumerate(points.items()):
        ax.scatter([latency], [miou], s=40 if crowded else 60, color=f"C{index % 10}", zorder=3)
        if label in front:
            ax.scatter([latency], [miou], s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    ax.margins(0.25)
    labelled = [label for label in points if label in front or not crowded]
    for label, lift in zip(labelled, label_lifts([points[label] for label in labelled], ax, fontsize)):
        ax.annotate(label, points[label], textcoords="offset points", xytext=(6, 6 + lift), fontsize=fontsize)
    staircase = sorted((points[label] for label in front if label in points), key=lambda p: (p[0], -p[1]))
    if len(staircase) > 1:
        ax.step([p[0] for p in staircase], [p[1] for p in staircase], where="post", color="black", alpha=0.5,
                linewidth=1, label="Pareto frontier (ringed)")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlabel="p50 latency, ms (lower is better)", ylabel=f"{metric_label} (higher is better)",
           title="latency vs accuracy" + (": Pareto frontier ringed" if front else ""))
    ax.grid(alpha=0.3)
    return png_bytes(figure)


def label_lifts(xy: Sequence[tuple[float, float]], ax: Any, fontsize: float) -> list[float]:
    """Vertical offsets (points) that keep labels of nearby points a line apart: from the top label
    down, each one that would overlap the one above (horizontally within a label's width) moves below it."""
    ax.autoscale_view()
    to_points = 72.0 / ax.figure.dpi
    anchors = [tuple(v * to_points for v in ax.transData.transform(p)) for p in xy]
    line, width = fontsize * 1.3, fontsize * 14  # a label's height and a generous width, in points
    lifts = [0.0] * len(xy)
    placed: list[tuple[float, float]] = []  # (x, label y) of the labels placed so far
    for i in sorted(range(len(xy)), key=lambda i: -anchors[i][1]):
        x, y = anchors[i]
        for px, py in placed:
            if abs(px - x) < width and y > py - line:
                y = py - line
        lifts[i] = y - anchors[i][1]
        placed.append((x, y))
    return lifts


def sample_grid(images: Sequence[np.ndarray], panels: Mapping[str, Sequence[np.ndarray]],
                class_names: Sequence[str], ignore_index: int = 255) -> bytes:
    """Rows of: image | one coloured mask per panel (ground truth, teacher, ...); legend of classes."""
    palette = class_palette(len(class_names))
    titles = ["image", *panels]
    rows = len(images)
    figure, axes = plt.subplots(rows, len(titles), figsize=(2.1 * len(titles), 2.1 * rows + 0.8), squeeze=False)
    for row in range(rows):
        pictures = [images[row], *(colourise(masks[row], palette, ignore_index) for masks in panels.values())]
        for col, picture in enumerate(pictures):
            ax = axes[row][col]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    handles = [Patch(color=palette[i] / 255, label=name) for i, name in enumerate(class_names)]
    figure.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, -0.02 - 0.03 * ((len(handles) - 1) // 5)))
    return png_bytes(figure)
