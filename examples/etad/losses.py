"""The loss terms of ETAD (App. A.3, eq. 5).

``L = L_bds + sum_i (L_bdp^i + L_iou^i + λ L_rg^i)``:

- :func:`balanced_bce`: BMN's batch-level positive/negative-balanced cross entropy, for the
  snippet startness/endness (``L_bds``) and for the start/end classification of each proposal
  (``L_bdp``).
- :func:`sampled_bce` and :func:`balanced_l2`: the IoU classification (cross entropy) and
  regression (L2) of ``L_iou``, each on a class-balanced random subset of the proposals.
- :func:`offset_loss`: smooth-L1 on the start/end and centre/width offsets of the positives
  (IoU above the stage's threshold), ``L_rg``.

Every random subset is drawn from an explicit :class:`torch.Generator`. Nothing here reads a
value back to the host (no ``int(t)``/``bool(t)``): counts stay tensors and the cases are
chosen with ``torch.where``, so that on a GPU the loss never stalls the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["balanced_bce", "balanced_l2", "offset_loss", "sampled_bce", "subsample"]


def _keys(mask: Tensor, generator: torch.Generator) -> Tensor:
    """``[N]`` uniform keys drawn on the generator's device, on ``mask``'s device."""
    keys = torch.rand(mask.shape[0], generator=generator, device=generator.device)
    return keys.to(mask.device, non_blocking=True)


def subsample(
    mask: Tensor, count: int | Tensor, generator: torch.Generator, *, keys: Tensor | None = None
) -> Tensor:
    """Keep ``count`` of the ``True`` entries of ``mask``, chosen uniformly without replacement.

    Args:
        mask: bool ``[N]``.
        count: how many to keep (an int or a 0-d tensor, e.g. another mask's sum: it is not
            read back to the host); all of them if ``count >= mask.sum()``.
        generator: source of the choice; the draw is made on the generator's device and the
            result moved to ``mask``'s device. It draws ``N`` numbers whatever the counts (the
            choice is made without reading them back to the host).
        keys: ``[N]`` keys drawn before (then ``generator`` is not used).

    Returns:
        bool ``[N]``, a subset of ``mask``.
    """
    if keys is None:
        keys = _keys(mask, generator)
    keys = keys.masked_fill(~mask, -1.0)
    # The `count` largest keys of `mask`'s entries (theirs are >= 0, the others -1): by rank.
    order = keys.argsort(descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return mask & (rank < count)


def balanced_bce(logits: Tensor, labels: Tensor, *, threshold: float = 0.5) -> Tensor:
    """Cross entropy with positives and negatives weighted equally (BMN).

    ``0.5 * mean_pos(-log p) + 0.5 * mean_neg(-log(1 - p))``: the same as BMN's coefficients
    ``0.5 N / N_pos`` and ``0.5 N / N_neg``. If one class is absent the mean over the other.

    Args:
        logits: ``[...]`` scores before the sigmoid (the whole batch at once).
        labels: same shape, soft labels; ``> threshold`` is positive.
        threshold: positive threshold.

    Returns:
        Scalar loss.
    """
    logits, positive = logits.reshape(-1), labels.reshape(-1) > threshold
    pos_loss = F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none"
    )
    neg_loss = F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none"
    )
    n_pos = positive.sum()
    n_neg = positive.numel() - n_pos
    pos_mean = (pos_loss * positive).sum() / n_pos.clamp(min=1)
    neg_mean = (neg_loss * ~positive).sum() / n_neg.clamp(min=1)
    both = 0.5 * (pos_mean + neg_mean)
    return torch.where(n_pos == 0, neg_mean, torch.where(n_neg == 0, pos_mean, both))


def sampled_bce(logits: Tensor, positive: Tensor, *, generator: torch.Generator) -> Tensor:
    """Cross entropy on all positives and as many randomly chosen negatives.

    Args:
        logits: ``[N]`` scores before the sigmoid.
        positive: bool ``[N]``.
        generator: source of the negative subset.

    Returns:
        Scalar: mean cross entropy over the positives and the sampled negatives; without
        positives, the mean over all negatives.
    """
    n_pos = positive.sum()
    negatives = torch.where(n_pos == 0, ~positive, subsample(~positive, n_pos, generator))
    selected = positive | negatives
    target = positive.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * selected).sum() / selected.sum().clamp(min=1)


def balanced_l2(
    pred: Tensor,
    target: Tensor,
    *,
    high: float,
    low: float,
    generator: torch.Generator,
) -> Tensor:
    """Squared error on the high-IoU proposals and equally many mid and low ones (BMN).

    Args:
        pred: ``[N]`` predicted IoU in ``[0, 1]``.
        target: ``[N]`` IoU with the matched ground truth.
        high: ``target > high`` is "high"; every high proposal is used.
        low: ``target <= low`` is "low"; ``low < target <= high`` is "mid". From each of these
            two groups as many proposals as there are high ones are drawn.
        generator: source of the subsets.

    Returns:
        Scalar mean squared error over the selected proposals; without high proposals, over
        all proposals.
    """
    hi = target > high
    n_hi = hi.sum()
    middle, lower = (target > low) & ~hi, target <= low
    first, second = _keys(middle, generator), _keys(lower, generator)
    mid = subsample(middle, n_hi, generator, keys=first)
    # The low subset takes the draw after the mid one's when that one needed a draw (some, not
    # all, mid proposals kept), the first otherwise: as when each subset drew only if needed.
    mid_drew = (n_hi > 0) & (n_hi < middle.sum())
    lo = subsample(lower, n_hi, generator, keys=torch.where(mid_drew, second, first))
    selected = torch.where(n_hi == 0, torch.ones_like(hi), hi | mid | lo)
    loss = (pred - target) ** 2
    return (loss * selected).sum() / selected.sum().clamp(min=1)


def offset_loss(pred: Tensor, target: Tensor, positive: Tensor) -> Tensor:
    """Smooth-L1 regression of the offsets of the positive proposals.

    Args:
        pred: ``[N, K]`` predicted offsets (start, end, centre, width).
        target: ``[N, K]`` target offsets.
        positive: bool ``[N]``, proposals whose IoU exceeds the stage threshold.

    Returns:
        Scalar: the sum over the ``K`` offsets of their mean loss over the positives; zero (still
        connected to ``pred``) without positives.
    """
    n_pos = positive.sum()
    loss = F.smooth_l1_loss(pred, target, reduction="none")
    # where, not a product: a negative's target may be huge, and inf * 0 would be NaN
    loss = torch.where(positive.unsqueeze(1), loss, torch.zeros_like(loss))
    return loss.sum() / n_pos.clamp(min=1)
