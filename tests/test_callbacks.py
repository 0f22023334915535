"""GradientStats: the same values as the per-parameter reference, without per-step clones."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from sgs_tad.training.callbacks import GradientStats


def _reference(params, grads, before, coef):
    """The former implementation: per-parameter clones and norms."""
    gnorm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
    moved = sum(float((a.detach() - b).float().square().sum()) for a, b in zip(params, before))
    size = sum(float(b.float().square().sum()) for b in before)
    return gnorm / coef, math.sqrt(moved / size)


@pytest.mark.parametrize("max_grad_norm", [None, 1e-2])
def test_gradient_stats_equal_the_per_parameter_reference(max_grad_norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter is left out
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    stats = GradientStats({"model": model}, update_every=1)
    trainer = types.SimpleNamespace(step=0, max_grad_norm=max_grad_norm)
    buffers = None
    for step in range(3):
        trainer.step = step
        opt.zero_grad()
        model(torch.randn(4, 5)).square().sum().backward()
        metrics = {}
        if max_grad_norm is not None:
            metrics["grad_norm"] = float(
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            )
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad.clone() for p in params]
        before = [p.detach().clone() for p in params]
        stats.on_before_optimizer_step(trainer)
        opt.step()
        stats.on_step_end(trainer, metrics)
        coef = (
            1.0
            if max_grad_norm is None
            else min(1.0, max_grad_norm / (metrics["grad_norm"] + 1e-6))
        )
        grad_norm, update = _reference(params, grads, before, coef)
        assert metrics["grad_norm/model"] == pytest.approx(grad_norm, rel=1e-5)
        assert metrics["update/model"] == pytest.approx(update, rel=1e-5)
        if buffers is None:
            buffers = [id(b) for b in stats._buffers["model"]]
        assert [id(b) for b in stats._buffers["model"]] == buffers  # allocated once


def test_gradient_stats_copy_parameters_only_on_update_steps_and_read_once(monkeypatch):
    model = nn.Linear(3, 2)
    stats = GradientStats({"model": model, "frozen": nn.Linear(1, 1).requires_grad_(False)})
    trainer = types.SimpleNamespace(step=0, max_grad_norm=None)
    copies, reads = [], []
    real_copy, real_tolist = torch._foreach_copy_, torch.Tensor.tolist
    monkeypatch.setattr(torch, "_foreach_copy_", lambda *a: copies.append(1) or real_copy(*a))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or real_tolist(t))
    for step in range(12):
        trainer.step = step
        model.weight.grad = torch.ones_like(model.weight)
        stats.on_before_optimizer_step(trainer)
        metrics: dict = {}
        stats.on_step_end(trainer, metrics)
        assert ("update/model" in metrics) == (step % 10 == 0)
        assert metrics["grad_norm/model"] == pytest.approx(math.sqrt(6))
    assert len(copies) == 2 and len(reads) == 12  # the copy on steps 0 and 10; one read a step
    assert stats.summary()["update/frozen"] == 0.0
    with pytest.raises(ValueError, match="update_every must be >= 1"):
        GradientStats({"model": model}, update_every=0)
