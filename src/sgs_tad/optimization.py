"""The paper's optimiser and schedule (§4.1), as defaults of :class:`~sgs_tad.trainer.SGSTrainer`.

AdamW with weight decay 1e-4 and two parameter groups: the encoder at a small learning rate
(1e-6 for TSM, 1e-7 for R(2+1)D in the paper) and the detector at 1e-3; the learning rate is
multiplied by 0.1 after epoch 5 of 6.

Example:
    >>> from torch import nn
    >>> opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> [g["lr"] for g in opt.param_groups], opt.defaults["weight_decay"]
    ([1e-06, 0.001], 0.0001)
    >>> default_scheduler(opt).milestones
    Counter({5: 1})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["default_optimizer", "default_scheduler", "trainable_parameters"]


def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` of ``modules``, in order, each one once."""
    seen: set[int] = set()
    out = []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def default_optimizer(
    encoder: nn.Module,
    detector: nn.Module,
    *,
    encoder_lr: float = 1e-6,
    detector_lr: float = 1e-3,
    weight_decay: float = 1e-4,
) -> torch.optim.Optimizer:
    """AdamW with one parameter group per module (groups without parameters are dropped).

    Args:
        encoder: the video encoder (group 0, ``encoder_lr``).
        detector: the detector (group 1, ``detector_lr``).
        encoder_lr: learning rate of the encoder.
        detector_lr: learning rate of the detector.
        weight_decay: AdamW weight decay of both groups.
    """
    for name, value in (("encoder_lr", encoder_lr), ("detector_lr", detector_lr)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0; got {value!r}.")
    enc = trainable_parameters(encoder)
    shared = {id(p) for p in enc}
    det = [p for p in trainable_parameters(detector) if id(p) not in shared]
    groups: list[dict[str, Any]] = []
    if enc:
        groups.append({"params": enc, "lr": encoder_lr, "name": "encoder"})
    if det:
        groups.append({"params": det, "lr": detector_lr, "name": "detector"})
    if not groups:
        raise ValueError(
            "neither the encoder nor the detector has a parameter with requires_grad=True;"
            " there is nothing to train. Unfreeze some parameters."
        )
    return torch.optim.AdamW(groups, lr=detector_lr, weight_decay=weight_decay)


def default_scheduler(
    optimizer: torch.optim.Optimizer, *, milestones: Sequence[int] = (5,), gamma: float = 0.1
) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step decay: multiply every learning rate by ``gamma`` at each epoch in ``milestones``.

    Stepped once per epoch; with the default, epochs 0-4 run at the base rate and epoch 5
    (the 6th) at a tenth of it.
    """
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=gamma)
