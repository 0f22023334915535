"""From an :class:`~etad.model.ETADPrediction` to ActivityNet-format detections (App. A.4).

The glue between the detector and ``sgs_tad.detection.postprocess``: boundary selection on the
refined (stage-averaged) boxes, the score ``p = p_s * p_e * p_iou`` with ``p_s`` (``p_e``) the
startness (endness) of the snippet where the box starts (ends), then soft-NMS, optional fusion
with video-level class scores, and seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from sgs_tad.detection.postprocess import (
    detections_from_proposals,
    proposal_scores,
    select_by_boundaries,
)

from .model import ETADPrediction

__all__ = ["to_detections"]


def to_detections(
    prediction: ETADPrediction,
    *,
    duration: float,
    class_scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    boundary_ratio: float = 0.5,
    sigma: float = 0.35,
    top_k: int = 100,
    offset: float = 0.0,
) -> list[dict[str, Any]]:
    """Detections of one video.

    Args:
        prediction: the detector's output for the video, on any device (moved to the CPU).
        duration: its length (or its window's) in seconds.
        class_scores: ``[num_classes]`` video-level class scores for the top-2 fusion;
            ``None`` gives class-agnostic detections labelled ``"action"``.
        class_names: names for ``class_scores``.
        boundary_ratio: relative height for the boundary selection (BMN: 0.5).
        sigma: Gaussian soft-NMS width (authors' code: 0.35).
        top_k: proposals kept by soft-NMS.
        offset: start of the window in seconds (sliding windows, THUMOS).

    Returns:
        ``[{"segment": [t0, t1], "score": s, "label": name}, ...]``, best first.
    """
    # Post-processing on the CPU, copied there once per video: its boolean masks and soft-NMS
    # picks would each sync a GPU, for a few hundred numbers (and class scores computed on
    # another device would not mix with them).
    prediction = prediction.to("cpu")
    if class_scores is not None:
        class_scores = class_scores.detach().cpu()
    segments, start, end = prediction.segments, prediction.start, prediction.end
    iou_score = prediction.iou_score
    keep = select_by_boundaries(segments, start, end, ratio=boundary_ratio)
    segments = segments[keep]
    t = start.shape[0]
    # the same snippet rule as select_by_boundaries: floor(x * T), clipped
    index = (segments * t).floor().long().clamp(0, t - 1)
    scores = proposal_scores(start[index[:, 0]], end[index[:, 1]], iou_score[keep])
    return detections_from_proposals(
        segments,
        scores,
        duration=duration,
        class_scores=class_scores,
        class_names=class_names,
        sigma=sigma,
        top_k=top_k,
        offset=offset,
    )
