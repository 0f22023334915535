"""Training targets from ground truth, and the two box parametrisations of the refinement.

All segments are normalised to the video, ``[start, end]`` with snippet ``i`` of ``T`` covering
``[i/T, (i+1)/T]``, the convention of ``sgs_tad.detection.proposals.ProposalMap.coords``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "assign_ground_truth",
    "boundary_labels",
    "decode_offsets",
    "encode_offsets",
    "segment_iou",
]

_EPS = 1e-6
#: Largest log-width offset applied in a refinement (as Faster R-CNN's ``log(1000 / 16)``): an
#: untrained head can output anything, and exp of it must not overflow to an infinite box.
MAX_LOG_WIDTH = math.log(1000.0 / 16.0)


def segment_iou(segments: Tensor, gt_segments: Tensor) -> Tensor:
    """Temporal IoU of every segment with every ground-truth segment.

    Args:
        segments: ``[..., P, 2]``; a reversed segment (end < start) has IoU 0.
        gt_segments: ``[..., G, 2]``, leading dimensions broadcast with ``segments``'.

    Returns:
        ``[..., P, G]`` IoU in ``[0, 1]``.
    """
    s, e = segments[..., :, None, 0], segments[..., :, None, 1]
    gs, ge = gt_segments[..., None, :, 0], gt_segments[..., None, :, 1]
    inter = (torch.minimum(e, ge) - torch.maximum(s, gs)).clamp(min=0)
    union = (e - s).clamp(min=0) + (ge - gs) - inter
    return inter / union.clamp(min=_EPS)


def assign_ground_truth(segments: Tensor, gt_segments: Tensor) -> tuple[Tensor, Tensor]:
    """Match each segment to the ground truth it overlaps most.

    Args:
        segments: ``[P, 2]``.
        gt_segments: ``[G, 2]`` with ``G >= 1``.

    Returns:
        ``(matched, iou)``: ``[P, 2]`` the matched ground truth and ``[P]`` the IoU with it.
    """
    iou, index = segment_iou(segments, gt_segments).max(dim=1)
    return gt_segments[index], iou


def boundary_labels(gt_segments: Tensor, temporal_scale: int) -> tuple[Tensor, Tensor]:
    """BMN startness / endness labels of every snippet.

    A region of 3 snippets is centred on each ground-truth start (end); a snippet's label is the
    largest fraction of the snippet covered by such a region (intersection over the snippet).

    Args:
        gt_segments: ``[G, 2]`` normalised; ``G`` may be 0 (all labels 0).
        temporal_scale: number of snippets T.

    Returns:
        ``(start, end)``, each ``[T]`` in ``[0, 1]``.
    """
    t = temporal_scale
    grid = torch.arange(t, dtype=gt_segments.dtype, device=gt_segments.device)
    lo, hi = (grid / t).unsqueeze(1), ((grid + 1) / t).unsqueeze(1)  # [T, 1]
    half = 1.5 / t

    def cover(points: Tensor) -> Tensor:
        if points.numel() == 0:
            return torch.zeros(t, dtype=gt_segments.dtype, device=gt_segments.device)
        inter = torch.minimum(hi, points + half) - torch.maximum(lo, points - half)
        return (inter.clamp(min=0) * t).amax(dim=1)  # divide by the snippet length 1/T

    return cover(gt_segments[:, 0]), cover(gt_segments[:, 1])


def encode_offsets(segments: Tensor, gt_segments: Tensor) -> Tensor:
    """Regression targets of ``segments`` towards their matched ground truth.

    Args:
        segments: ``[P, 2]`` the boxes a stage evaluates.
        gt_segments: ``[P, 2]`` the matched ground truth.

    Returns:
        ``[P, 4]`` (start, end, centre, log-width) offsets: start and end offsets in units of
        the box length, the centre offset is their mean, the width offset is the log ratio.
    """
    length = (segments[:, 1] - segments[:, 0]).clamp(min=_EPS)
    gt_length = (gt_segments[:, 1] - gt_segments[:, 0]).clamp(min=_EPS)
    d_start = (gt_segments[:, 0] - segments[:, 0]) / length
    d_end = (gt_segments[:, 1] - segments[:, 1]) / length
    d_centre = 0.5 * (d_start + d_end)
    d_width = torch.log(gt_length / length)
    return torch.stack((d_start, d_end, d_centre, d_width), dim=1)


def decode_offsets(segments: Tensor, offsets: Tensor) -> Tensor:
    """Refine ``segments`` by the mean of the start/end and the centre/width parametrisation.

    The inverse of :func:`encode_offsets`: with its exact output both parametrisations give the
    ground truth, and so does their mean (width ratios up to ``exp(MAX_LOG_WIDTH)`` = 62.5).

    Args:
        segments: ``[P, 2]``.
        offsets: ``[P, 4]`` (start, end, centre, log-width).

    Returns:
        ``[P, 2]`` refined segments.
    """
    length = segments[:, 1] - segments[:, 0]
    centre = 0.5 * (segments[:, 0] + segments[:, 1])
    se_start = segments[:, 0] + offsets[:, 0] * length
    se_end = segments[:, 1] + offsets[:, 1] * length
    cw_centre = centre + offsets[:, 2] * length
    cw_half = 0.5 * length * torch.exp(offsets[:, 3].clamp(max=MAX_LOG_WIDTH))
    start = 0.5 * (se_start + cw_centre - cw_half)
    end = 0.5 * (se_end + cw_centre + cw_half)
    return torch.stack((start, end), dim=1)
