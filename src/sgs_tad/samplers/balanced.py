"""Balanced sampling over bins: the engine of the label-guided strategies (§3.5).

``iou_balanced`` and ``scale_balanced`` (see :func:`sgs_tad.detection.proposals.sample_proposals`)
put every proposal in one of three bins and draw equal counts from each.

Example:
    >>> import torch
    >>> bins = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])
    >>> idx = balanced_sample(bins, 3, 6, generator=torch.Generator().manual_seed(0))
    >>> torch.bincount(bins[idx], minlength=3).tolist()   # bin 2 has one member only
    [3, 2, 1]
"""

from __future__ import annotations

import torch

from sgs_tad.samplers.base import check_request

__all__ = ["balanced_counts", "balanced_sample"]


def balanced_counts(
    sizes: list[int], num_samples: int, *, generator: torch.Generator | None = None
) -> list[int]:
    """How many to draw from each bin: equal shares, shortfalls filled by the other bins.

    Every bin gets ``min(size, level)`` or ``level + 1`` items for one water level: bins that
    are not exhausted end within one of each other. Which bins get the ``+1`` of an uneven
    split is drawn from ``generator``.

    Args:
        sizes: number of members of each bin.
        num_samples: total to draw, at most ``sum(sizes)``.

    Returns:
        Count per bin, summing to ``num_samples``.
    """
    check_request(sum(sizes), num_samples)
    alloc = [0] * len(sizes)
    remaining = num_samples
    while remaining > 0:
        open_bins = [b for b, n in enumerate(sizes) if alloc[b] < n]
        share = remaining // len(open_bins)
        if share == 0:
            order = torch.randperm(len(open_bins), generator=generator)[:remaining]
            for j in order.tolist():
                alloc[open_bins[j]] += 1
            break
        for b in open_bins:
            take = min(share, sizes[b] - alloc[b])
            alloc[b] += take
            remaining -= take
    return alloc


def balanced_sample(
    bins: torch.Tensor,
    num_bins: int,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``num_samples`` items with equal counts per bin, uniformly within each bin.

    Args:
        bins: ``LongTensor [N]``, the bin of each item, in ``[0, num_bins)``.
        num_bins: number of bins.
        num_samples: total to draw (``<= N``); shares as in :func:`balanced_counts`.
        generator: source of every random choice.

    Returns:
        Sorted ``LongTensor [num_samples]`` of item indices.
    """
    bins = bins.reshape(-1).long().cpu()
    if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= num_bins):
        raise ValueError(f"bins must lie in [0, {num_bins}), got values outside.")
    members = [torch.nonzero(bins == b, as_tuple=True)[0] for b in range(num_bins)]
    counts = balanced_counts([len(m) for m in members], num_samples, generator=generator)
    picked = [
        m[torch.randperm(len(m), generator=generator)[:c]]
        for m, c in zip(members, counts)
        if c > 0
    ]
    if not picked:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(picked).sort().values
