"""The ETAD losses read nothing back to the host; RoI pooling reads once per call."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from etad.losses import balanced_bce, balanced_l2, offset_loss, sampled_bce
from etad.roi import roi_interpolate
from test_sgs_syncs import SyncCounter


def test_losses_make_no_host_sync():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, requires_grad=True), torch.rand(50)
    target = torch.rand(50)
    with SyncCounter() as counter:
        for positives in (labels > 0.5, labels > 2.0, labels >= 0.0):  # some, none, all
            loss = (
                balanced_bce(logits, positives.float())
                + sampled_bce(logits, positives, generator=g)
                + balanced_l2(logits.sigmoid(), target, high=0.7, low=0.3, generator=g)
                + offset_loss(logits[:, None].expand(50, 4), torch.zeros(50, 4), positives)
            )
            loss.backward()
    assert counter.total == 0, counter.sites


def test_roi_pooling_reads_once_per_call():
    features = torch.randn(3, 8, 20, requires_grad=True)
    segments = torch.rand(30, 2).sort(dim=1).values
    segments[0, 1] = segments[0, 0]  # a zero-width bin
    segments[1] = segments[1].flip(0)  # a reversed segment
    batch_index = torch.randint(0, 3, (30,))  # not grouped by video
    with SyncCounter() as counter:
        out = roi_interpolate(features, segments, batch_index, 8)
        out.sum().backward()
    assert counter.total == 1, counter.sites
