"""1D RoI interpolation: the mean of a linearly interpolated feature sequence over each bin.

G-TAD's "interpolation and rescaling" (and ``torchvision.ops.roi_align`` on a ``[C, T, 1]``
image, which the authors use) samples each bin at a few points and averages them. We take the
limit of that: the exact mean of the piecewise-linear interpolant over the bin, so the result
does not depend on a sample count and long proposals are not aliased.

The mean is linear in the features: ``out[r, :, j] = features[b_r] @ W[r, j]`` where
``W[r, j, t]`` is the integral over bin ``j`` of the interpolation "hat" of snippet ``t``,
divided by the bin width. ``W`` is built without autograd (the boxes are not differentiated)
and applied with one matrix product per video, so the expensive part, with autograd, is a
matmul whose backward is a matmul too; no ``[R, bins, C]`` gather is materialised.

Coordinates are normalised to the video: snippet ``i`` of ``T`` covers ``[i/T, (i+1)/T]`` and its
feature sits at the centre. Between centres the sequence is linear, within half a snippet of
either end of the video it is constant, and outside the video (``x < 0`` or ``x > 1``, which the
extended proposals reach) it is zero; a bin partly outside averages in those zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["boundary_windows", "extend_segments", "roi_interpolate"]

# Bins narrower than this (in snippets) take the point value at their centre (the limit of the
# mean) instead of a difference of hat integrals divided by a width near zero.
MIN_WIDTH = 1e-3


def extend_segments(segments: Tensor, ratio: float) -> Tensor:
    """Extend each segment by ``ratio`` of its length on both sides.

    Args:
        segments: ``[R, 2]`` (start, end).
        ratio: fraction of the length added on each side (0.5 doubles the length).

    Returns:
        ``[R, 2]`` extended segments.
    """
    length = segments[:, 1] - segments[:, 0]
    pad = ratio * length
    return torch.stack((segments[:, 0] - pad, segments[:, 1] + pad), dim=1)


def boundary_windows(segments: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """Windows centred on each start and each end, ``ratio`` of the length on either side.

    Args:
        segments: ``[R, 2]`` (start, end).
        ratio: half-width of each window as a fraction of the segment length.

    Returns:
        ``(start_windows, end_windows)``, each ``[R, 2]``.
    """
    half = ratio * (segments[:, 1] - segments[:, 0]).abs()
    starts = torch.stack((segments[:, 0] - half, segments[:, 0] + half), dim=1)
    ends = torch.stack((segments[:, 1] - half, segments[:, 1] + half), dim=1)
    return starts, ends


def _hat_integral(u: Tensor, t: int) -> Tensor:
    """``[..., T + 2]``: integral from -inf to ``u`` of the hat of each knot ``-1 .. T``.

    ``u`` must lie in ``[-1, T)``. Knot ``k`` sits at ``k - 1``; with ``m = floor(u)`` and
    ``r = u - m`` the integral is 1 for knots left of ``m``, ``1 - (1 - r)^2 / 2`` at ``m``,
    ``r^2 / 2`` at ``m + 1`` and 0 further right. Built from one comparison and two scatters
    instead of evaluating a quadratic at every knot.
    """
    m = u.floor()
    r = (u - m).unsqueeze(-1)
    at = (m + 1).long().unsqueeze(-1)  # index of the knot at position m
    knots = torch.arange(t + 2, device=u.device)
    cum = (knots < at).to(u.dtype)
    cum.scatter_(-1, at, 1.0 - 0.5 * (1.0 - r) * (1.0 - r))
    cum.scatter_(-1, at + 1, 0.5 * r * r)
    return cum


def _hat_value(u: Tensor, t: int) -> Tensor:
    """``[..., T + 2]``: value at ``u`` of the hat of each knot ``-1 .. T``."""
    knots = torch.arange(-1, t + 1, dtype=u.dtype, device=u.device)
    return (1.0 - (u.unsqueeze(-1) - knots).abs()).clamp(min=0.0)


def interpolation_weights(segments: Tensor, num_bins: int, temporal_scale: int) -> Tensor:
    """The matrix ``W`` of the module docstring: ``[R, num_bins, T]``.

    Args:
        segments: ``[R, 2]`` normalised (start, end).
        num_bins: bins per segment.
        temporal_scale: number of snippets ``T``.

    Returns:
        ``[R, num_bins, T]``; each row sums to the fraction of its bin inside the video.
    """
    t = temporal_scale
    seg = segments.detach() * t - 0.5  # snippet-centre units: snippet i at i
    steps = torch.linspace(0.0, 1.0, num_bins + 1, dtype=seg.dtype, device=seg.device)
    edges = seg[:, :1] + (seg[:, 1:] - seg[:, :1]) * steps  # [R, n+1]
    # zero outside the video: clamp the integration limits to its extent [-0.5, T - 0.5]
    cum = _hat_integral(edges.clamp(-0.5, t - 0.5), t)  # [R, n+1, T+2]
    width = edges[:, 1:] - edges[:, :-1]  # [R, n], negative for a reversed segment
    short = width.abs() < MIN_WIDTH
    weights = (cum[:, 1:] - cum[:, :-1]) / torch.where(short, 1.0, width).unsqueeze(-1)
    if bool(short.any()):
        centre = 0.5 * (edges[:, 1:] + edges[:, :-1])
        inside = ((centre >= -0.5) & (centre <= t - 0.5)).unsqueeze(-1)
        point = _hat_value(centre.clamp(-0.5, t - 0.5), t) * inside
        weights = torch.where(short.unsqueeze(-1), point, weights)
    # the padding knots -1 and T repeat the first and last snippet (constant extension)
    core = weights[..., 1:-1].clone()
    core[..., 0] += weights[..., 0]
    core[..., -1] += weights[..., -1]
    return core


def roi_interpolate(
    features: Tensor, segments: Tensor, batch_index: Tensor, num_bins: int
) -> Tensor:
    """Mean feature over ``num_bins`` equal bins of each segment.

    Args:
        features: ``[B, C, T]`` feature sequences.
        segments: ``[R, 2]`` normalised (start, end); may extend beyond ``[0, 1]``; a reversed
            segment (end < start) gives its bins in reversed order.
        batch_index: ``[R]`` long, which video each segment belongs to.
        num_bins: number of bins per segment.

    Returns:
        ``[R, C, num_bins]``, differentiable with respect to ``features`` (not ``segments``).

    Example:
        >>> f = torch.arange(4.0).view(1, 1, 4)  # snippet centres at 1/8, 3/8, 5/8, 7/8
        >>> roi_interpolate(f, torch.tensor([[0.125, 0.875]]), torch.tensor([0]), 3)
        tensor([[[0.5000, 1.5000, 2.5000]]])
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [B, C, T], got shape {tuple(features.shape)}")
    if segments.dim() != 2 or segments.shape[1] != 2:
        raise ValueError(f"segments must be [R, 2], got shape {tuple(segments.shape)}")
    if batch_index.shape != segments.shape[:1]:
        raise ValueError(
            f"batch_index must be [R] = [{segments.shape[0]}], got {tuple(batch_index.shape)}"
        )
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    b, c, t = features.shape
    r = segments.shape[0]
    if r and (int(batch_index.min()) < 0 or int(batch_index.max()) >= b):
        raise ValueError(
            f"batch_index must lie in [0, B={b}), got values in "
            f"[{int(batch_index.min())}, {int(batch_index.max())}]"
        )
    with torch.no_grad():
        weights = interpolation_weights(segments.to(features.dtype), num_bins, t)
        owner = batch_index.to(torch.long)
        order = None
        if r > 1 and not bool((owner[1:] >= owner[:-1]).all()):
            order = owner.argsort(stable=True)
            owner, weights = owner[order], weights[order]
        counts = torch.bincount(owner, minlength=b).tolist()
    # one matmul per video on its contiguous block of segments: [R_b, n, T] @ [T, C]
    blocks = [
        torch.matmul(w, features[v].t())
        for v, w in enumerate(weights.split(counts))
        if w.shape[0] > 0
    ]
    out = torch.cat(blocks) if blocks else features.new_zeros(0, num_bins, c)
    if order is not None:
        out = out[order.argsort()]
    return out.transpose(1, 2)
