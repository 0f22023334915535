"""Detections against ground truth on a timeline, in the style of the paper's Fig. 7."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_predictions"]


def plot_predictions(
    dataset: Sequence[Any],
    predictions: Mapping[str, Any],
    path: str | Path,
    *,
    num_videos: int = 4,
    top_k: int = 3,
) -> Path:
    """Draw, for the first ``num_videos`` videos, the ground truth and the top detections.

    Args:
        dataset: Items with ``video_id``, ``duration``, ``segments`` (``[G, 2]`` fractions of
            the duration) and ``labels`` (e.g. :class:`sgs_tad.data.ActivityNetDataset`).
        predictions: An ActivityNet results dict (``{"results": {video_id: [...]}}``).
        path: Output PNG.
        num_videos: Rows of the figure.
        top_k: Detections drawn per video, best first, with their scores.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = predictions.get("results", predictions)
    rows = min(num_videos, len(dataset))
    fig, axes = plt.subplots(rows, 1, figsize=(9, 1.5 * rows + 0.4), squeeze=False)
    classes = getattr(dataset, "classes", None)
    for ax, i in zip(axes[:, 0], range(rows)):
        sample = dataset[i]
        duration = float(sample.duration)
        for (s, e), lab in zip(sample.segments.tolist(), sample.labels.tolist()):
            name = classes[lab] if classes is not None else str(lab)
            ax.broken_barh([(s * duration, (e - s) * duration)], (1.1, 0.8), color="tab:green")
            ax.text(s * duration, 1.5, f" {name}", va="center", fontsize=7, color="white")
        dets = sorted(results.get(sample.video_id, []), key=lambda d: -d["score"])[:top_k]
        for j, d in enumerate(dets):
            t0, t1 = d["segment"]
            y = 0.05 + j * 0.95 / max(top_k, 1)
            ax.broken_barh([(t0, t1 - t0)], (y, 0.8 / max(top_k, 1)), color="tab:orange",
                           alpha=0.9 - 0.2 * j)  # fmt: skip
            ax.text(t1, y + 0.4 / max(top_k, 1), f" {d['label']} {d['score']:.2f}",
                    va="center", fontsize=6)  # fmt: skip
        ax.set_xlim(0, duration)
        ax.set_ylim(0, 2)
        ax.set_yticks([0.5, 1.5], ["predicted", "ground truth"], fontsize=7)
        ax.set_title(sample.video_id, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
