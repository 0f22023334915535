"""Tests for examples/etad/losses.py."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from etad.losses import (
    balanced_bce,
    balanced_l2,
    offset_loss,
    sampled_bce,
    subsample,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_balanced_bce_equals_bmn_coefficients():
    g = _gen()
    logits = torch.randn(2, 20, generator=g)
    labels = torch.rand(2, 20, generator=g)
    p = logits.sigmoid().reshape(-1)
    pos = (labels.reshape(-1) > 0.5).float()
    neg = 1 - pos
    n = p.numel()
    coef_pos, coef_neg = 0.5 * n / pos.sum(), 0.5 * n / neg.sum()
    ref = -(coef_pos * pos * torch.log(p) + coef_neg * neg * torch.log(1 - p)).mean()
    torch.testing.assert_close(balanced_bce(logits, labels), ref)


def test_balanced_bce_one_class_only():
    logits = torch.tensor([0.0, 2.0])
    # all negative: mean of -log(1 - p)
    ref = -torch.log(1 - logits.sigmoid()).mean()
    torch.testing.assert_close(balanced_bce(logits, torch.zeros(2)), ref)
    ref = -torch.log(logits.sigmoid()).mean()
    torch.testing.assert_close(balanced_bce(logits, torch.ones(2)), ref)


def test_subsample_is_exact_reproducible_and_leaves_global_rng_alone():
    mask = torch.zeros(100, dtype=torch.bool)
    mask[::3] = True
    state = torch.get_rng_state()
    a = subsample(mask, 7, _gen(5))
    b = subsample(mask, 7, _gen(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert int(a.sum()) == 7 and bool((a <= mask).all())
    assert not torch.equal(a, subsample(mask, 7, _gen(6)))
    assert torch.equal(subsample(mask, 1000, _gen()), mask)
    assert int(subsample(mask, 0, _gen()).sum()) == 0


def test_sampled_bce_uses_as_many_negatives_as_positives():
    # 2 positives (logit 0, loss log 2) and 10 negatives with distinct losses: the result must
    # be the mean over the 2 positives and exactly 2 of the negatives
    positive = torch.zeros(12, dtype=torch.bool)
    positive[:2] = True
    logits = torch.cat((torch.zeros(2), torch.arange(10.0)))
    neg_losses = torch.nn.functional.softplus(torch.arange(10.0))
    candidates = {
        round(float((2 * math.log(2) + neg_losses[i] + neg_losses[j]) / 4), 5)
        for i in range(10)
        for j in range(i + 1, 10)
    }
    seen = set()
    for seed in range(8):
        loss = round(float(sampled_bce(logits, positive, generator=_gen(seed))), 5)
        assert loss in candidates
        seen.add(loss)
    assert len(seen) > 1  # the negatives are drawn at random


def test_sampled_bce_without_positives_is_mean_over_negatives():
    logits = torch.tensor([0.0, 1.0, -1.0])
    ref = torch.nn.functional.softplus(logits).mean()
    torch.testing.assert_close(
        sampled_bce(logits, torch.zeros(3, dtype=torch.bool), generator=_gen()), ref
    )


def test_balanced_l2_selects_equal_counts_per_band():
    # 2 high, 5 mid, 10 low; only high proposals have an error (1.0 each):
    # mean = 2 / (2 + 2 + 2)
    target = torch.cat((torch.full((2,), 0.9), torch.full((5,), 0.5), torch.full((10,), 0.1)))
    pred = target.clone()
    pred[:2] -= 1.0
    loss = balanced_l2(pred, target, high=0.7, low=0.3, generator=_gen())
    torch.testing.assert_close(loss, torch.tensor(2 / 6))
    # no high proposals: mean over all
    target = torch.full((4,), 0.2)
    loss = balanced_l2(target + 0.5, target, high=0.7, low=0.3, generator=_gen())
    torch.testing.assert_close(loss, torch.tensor(0.25))


def test_offset_loss_positives_only_and_connected_without_any():
    pred = torch.zeros(3, 4, requires_grad=True)
    target = torch.tensor([[0.5, 0, 0, 0], [1e30, 0, 0, 0], [2.0, 0, 0, 0]])
    positive = torch.tensor([True, False, True])
    # smooth-L1 (beta 1): 0.5 * 0.5^2 = 0.125 and 2 - 0.5 = 1.5; mean over 2 positives
    loss = offset_loss(pred, target, positive)
    torch.testing.assert_close(loss, torch.tensor((0.125 + 1.5) / 2))
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1].abs().sum() == 0
    none = offset_loss(pred, target, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
