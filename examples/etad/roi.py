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


def _hat_value(u: Tensor, t: int) -> Tensor:
    """``[..., T + 2]``: value at ``u`` of the hat of each knot ``-1 .. T``."""
    knots = torch.arange(-1, t + 1, dtype=u.dtype, device=u.device)
    return (1.0 - (u.unsqueeze(-1) - knots).abs()).clamp(min=0.0)


def _weights(segments: Tensor, num_bins: int, t: int) -> tuple[Tensor, Tensor]:
    """Bin integrals of the knot hats ``[R, n, T + 2]`` and the ``[R, n]`` factor to apply.

    The mean over bin ``j`` of segment ``r`` is ``scale[r, j] * weights[r, j] @ padded`` with
    ``padded`` the ``T + 2`` knot values (the sequence with its first and last snippet repeated
    at knots -1 and T, which makes it constant there).
    """
    seg = segments.detach() * t - 0.5  # snippet-centre units: snippet i at i
    steps = torch.linspace(0.0, 1.0, num_bins + 1, dtype=seg.dtype, device=seg.device)
    edges = seg[:, :1] + (seg[:, 1:] - seg[:, :1]) * steps  # [R, n+1]
    # The integral from -inf to u of the hat of knot k (at position k - 1) is, with
    # m = floor(u), r = u - m and a = m + 1 the knot at m: 1 for k < a, 1 - (1 - r)^2 / 2 at
    # k = a, r^2 / 2 at k = a + 1, 0 beyond. A bin's weights are the difference of that at its
    # two edges: the knots strictly between (a step, built from booleans) plus four corrections.
    # Clamping u to the video extent [-0.5, T - 0.5] makes the sequence zero outside the video.
    u = edges.clamp(-0.5, t - 0.5)
    m = u.floor()
    r = u - m
    at = (m + 1).long()  # [R, n+1], in [0, T]
    below = torch.arange(t + 2, device=u.device) < at.unsqueeze(-1)  # bool [R, n+1, T+2]
    weights = (below[:, 1:] ^ below[:, :-1]).to(seg.dtype)  # [R, n, T+2]
    backwards = at[:, 1:] < at[:, :-1]  # reversed segments step down, not up
    # (where, not `if backwards.any()`: no host sync; the same values either way)
    weights = torch.where(backwards.unsqueeze(-1), -weights, weights)
    q_at = (1.0 - 0.5 * (1.0 - r) ** 2).unsqueeze(-1)
    q_next = (0.5 * r**2).unsqueeze(-1)
    at = at.unsqueeze(-1)
    weights.scatter_add_(-1, at[:, 1:], q_at[:, 1:])
    weights.scatter_add_(-1, at[:, 1:] + 1, q_next[:, 1:])
    weights.scatter_add_(-1, at[:, :-1], -q_at[:, :-1])
    weights.scatter_add_(-1, at[:, :-1] + 1, -q_next[:, :-1])
    width = edges[:, 1:] - edges[:, :-1]  # [R, n], negative for a reversed segment
    short = width.abs() < MIN_WIDTH
    # divide after the matmul, on [R, n, C] rather than [R, n, T + 2]
    scale = torch.where(short, 1.0, 1.0 / torch.where(short, 1.0, width))
    # Computed for every bin and selected, rather than after `if short.any()` (a host sync).
    centre = 0.5 * (edges[:, 1:] + edges[:, :-1])
    inside = ((centre >= -0.5) & (centre <= t - 0.5)).unsqueeze(-1)
    point = _hat_value(centre.clamp(-0.5, t - 0.5), t) * inside
    weights = torch.where(short.unsqueeze(-1), point, weights)
    return weights, scale


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
        ``[R, num_bins, C]`` (bins first, so that flattening needs no copy), differentiable
        with respect to ``features`` (not ``segments``).

    Example:
        >>> f = torch.arange(4.0).view(1, 1, 4)  # snippet centres at 1/8, 3/8, 5/8, 7/8
        >>> roi_interpolate(f, torch.tensor([[0.125, 0.875]]), torch.tensor([0]), 3).flatten()
        tensor([0.5000, 1.5000, 2.5000])
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
    with torch.no_grad():
        owner = batch_index.to(torch.long)
        # The one host read of the call: the checks and the segments per video, together.
        low, high = (owner.min(), owner.max()) if r else (owner.new_zeros(()),) * 2
        finite = torch.isfinite(segments).all(-1)
        read = torch.cat((torch.stack((low, high, (~finite).sum())),
                          torch.bincount(owner.clamp(0, b - 1), minlength=b)))  # fmt: skip
        low_v, high_v, n_bad, *counts = read.tolist()
        if r and (low_v < 0 or high_v >= b):
            raise ValueError(
                f"batch_index must lie in [0, B={b}), got values in [{low_v}, {high_v}]"
            )
        if n_bad:
            # A NaN or inf boundary (the detector's regression diverged) would become an index
            # of -2**63 in _weights, far from the cause.
            raise FloatingPointError(
                f"{n_bad} of {r} segments to pool have non-finite boundaries: the detector's "
                "outputs are not finite (its weights or inputs overflowed). Lower the learning "
                "rate or set max_grad_norm."
            )
        # The bin weights in at least fp32, whatever the features' dtype: under fp16/bf16
        # autocast the features are half precision, and positions cast to it would be quantised
        # to about T * 2^-11 (fp16) or T * 2^-8 (bf16) snippets, and clamping to T - 0.5 could
        # round up to T (an out-of-range knot). Only the finished weights are rounded.
        exact = torch.promote_types(features.dtype, torch.float32)
        weights, scale = _weights(segments.to(exact), num_bins, t)
        weights, scale = weights.to(features.dtype), scale.to(features.dtype)
        # A stable sort groups each video's segments (the identity if already grouped),
        # without reading back whether they were.
        order = owner.argsort(stable=True)
        weights, scale = weights[order], scale[order]
    # knot values -1 .. T: the first and last snippet repeated (constant extension)
    padded = torch.cat((features[:, :, :1], features, features[:, :, -1:]), dim=2)
    # one matmul per video on its contiguous block of segments: [R_b, n, T+2] @ [T+2, C]
    blocks = [
        torch.matmul(w, padded[v].t())
        for v, w in enumerate(weights.split(counts))
        if w.shape[0] > 0
    ]
    out = torch.cat(blocks) if blocks else features.new_zeros(0, num_bins, c)
    out = out * scale.unsqueeze(-1)
    return out[order.argsort()]
