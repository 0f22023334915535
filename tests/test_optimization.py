"""The paper's default optimiser and schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgs_tad.optimization import default_optimizer, default_scheduler, trainable_parameters


def test_two_groups_with_the_paper_rates_and_shared_parameters_once():
    encoder, detector = nn.Linear(2, 3), nn.Linear(3, 1)
    detector.extra = encoder  # a shared submodule must not land in both groups
    opt = default_optimizer(encoder, detector)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["encoder", "detector"]
    assert [g["lr"] for g in opt.param_groups] == [1e-6, 1e-3]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)


def test_frozen_modules_drop_their_group_and_nothing_to_train_is_an_error():
    encoder, detector = nn.Linear(2, 3).requires_grad_(False), nn.Linear(3, 1)
    assert [g["name"] for g in default_optimizer(encoder, detector).param_groups] == ["detector"]
    assert trainable_parameters(encoder) == []
    with pytest.raises(ValueError, match="nothing to train"):
        default_optimizer(encoder, detector.requires_grad_(False))
    with pytest.raises(ValueError, match="encoder_lr"):
        default_optimizer(nn.Linear(1, 1), nn.Linear(1, 1), encoder_lr=-1)


def test_step_decay_after_epoch_5_of_6():
    opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1))
    sched = default_scheduler(opt)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == [1e-3] * 5 and lrs[5] == pytest.approx(1e-4)
