"""The paper's default optimiser and schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sgs_tad.training.optimization import (
    default_optimizer,
    default_scheduler,
    trainable_parameters,
    warmup_cosine_scheduler,
)


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


def _lrs(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, steps: int):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_holds_the_delayed_group_then_joins_the_cosine():
    opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1), encoder_lr=0.1, detector_lr=1.0)
    sched = warmup_cosine_scheduler(
        opt, total_steps=100, warmup_steps=10, delay_steps={"encoder": 20}, final_factor=0.01
    )
    lrs = _lrs(opt, sched, 120)
    enc = [r[0] for r in lrs]
    det = [r[1] for r in lrs]
    assert enc[:20] == [0.0] * 20
    assert all(b > a for a, b in zip(enc[20:29], enc[21:30]))  # ramp
    cosine = [0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1, k / 100))) for k in range(120)]
    assert det[10:] == pytest.approx(cosine[10:])
    assert enc[30:] == pytest.approx([0.1 * c for c in cosine[30:]])
    assert det[100:] == pytest.approx([0.01] * 20)  # stays at the floor past total_steps
    assert det[0] == pytest.approx(1 / 11 * cosine[0])


def test_warmup_cosine_resumes_from_its_state_dict():
    def make():
        opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1))
        return opt, warmup_cosine_scheduler(
            opt, total_steps=50, warmup_steps=5, delay_steps={"encoder": 7}
        )

    opt, sched = make()
    full = _lrs(opt, sched, 30)
    opt, sched = make()
    _lrs(opt, sched, 12)
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    rest = _lrs(opt2, sched2, 18)
    assert [lr for row in rest for lr in row] == pytest.approx(
        [lr for row in full[12:] for lr in row]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
        ({"total_steps": 10, "delay_steps": {"backbone": 3}}, "backbone"),
        ({"total_steps": 10, "delay_steps": {"encoder": 1.5}}, "encoder"),
        ({"total_steps": 10, "final_factor": 2.0}, "final_factor"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(kwargs, match):
    opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1))
    with pytest.raises(ValueError, match=match):
        warmup_cosine_scheduler(opt, **kwargs)
