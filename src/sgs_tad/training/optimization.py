"""Optimisers and schedules of :class:`~sgs_tad.SGSTrainer`: the one place for rates.

The trainer takes *factories*: ``optimizer(encoder, detector) -> Optimizer`` and
``scheduler(optimizer) -> LRScheduler``, because it builds them on the modules it trains. The
learning rates are the factories' arguments and nowhere else:

* :func:`adamw` (the trainer's default): the paper's AdamW (§4.1), weight decay 1e-4, two
  parameter groups: the encoder at a small rate (1e-6 for TSM, 1e-7 for R(2+1)D in the paper)
  and the detector at 1e-3.
* :func:`step_decay` (the default schedule): x0.1 after epoch 5 of 6, stepped per epoch.
* :func:`warmup_cosine`: per-step cosine with warm-up and a per-group hold.

A scheduler factory's ``interval`` attribute (``"epoch"`` or ``"step"``) tells the trainer when
to step it; a plain callable without one is stepped per epoch.

Example:
    >>> from torch import nn
    >>> make = adamw(encoder_lr=1e-5, detector_lr=1e-3)
    >>> opt = make(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> [g["lr"] for g in opt.param_groups]
    [1e-05, 0.001]
    >>> step_decay().interval, warmup_cosine(total_steps=9).interval
    ('epoch', 'step')

The functions behind them build one optimiser or schedule directly:

    >>> from torch import nn
    >>> opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> [g["lr"] for g in opt.param_groups], opt.defaults["weight_decay"]
    ([1e-06, 0.001], 0.0001)
    >>> default_scheduler(opt).milestones
    Counter({5: 1})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "OptimizerFactory",
    "SchedulerFactory",
    "adamw",
    "default_optimizer",
    "default_scheduler",
    "step_decay",
    "trainable_parameters",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]


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


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    delay_steps: Mapping[str, int] | None = None,
    final_factor: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: cosine decay over the run, with a per-group hold at 0 and warm-up.

    Every group follows one cosine from its base rate (step 0) to ``final_factor`` of it
    (``total_steps``); a group with a delay stays at 0 for that many steps, then ramps
    linearly onto the cosine over ``warmup_steps``.

    A from-scratch (or far-from-the-task) encoder trained together with a fresh detector moves
    the detector's input while the detector is still learning to read it; holding the encoder
    (``delay_steps={"encoder": n}``) until the detector has settled, then warming it up, keeps
    the two from chasing each other. Step it after every optimizer step
    (:func:`warmup_cosine` is the factory that tells the trainer so).

    Args:
        optimizer: its groups may carry a ``"name"`` (as :func:`default_optimizer` sets).
        total_steps: optimizer steps of the whole run; the cosine reaches ``final_factor``
            there (and stays).
        warmup_steps: linear warm-up length of every group, after its delay.
        delay_steps: ``{group name: steps at learning rate 0}`` before that group's warm-up.
        final_factor: the last learning rate as a fraction of the base one.

    Example:
        >>> from torch import nn
        >>> opt = default_optimizer(nn.Linear(2, 2), nn.Linear(2, 1), encoder_lr=1.0,
        ...                         detector_lr=1.0)
        >>> sched = warmup_cosine_scheduler(opt, total_steps=10, warmup_steps=2,
        ...                                 delay_steps={"encoder": 4})
        >>> lrs = []
        >>> for _ in range(10):
        ...     lrs.append([round(g["lr"], 2) for g in opt.param_groups])
        ...     opt.step(); sched.step()
        >>> lrs[0], lrs[3], lrs[4], lrs[6], lrs[9]
        ([0.0, 0.33], [0.0, 0.8], [0.22, 0.66], [0.35, 0.35], [0.03, 0.03])
    """
    delays = dict(delay_steps or {})
    names = [g.get("name") for g in optimizer.param_groups]
    unknown = sorted(set(delays) - {n for n in names if n is not None})
    if unknown:
        raise ValueError(
            f"delay_steps names groups {unknown} that the optimizer does not have; its groups "
            f"are {names}. Name groups with param_group['name']."
        )
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(
            f"total_steps must be an int >= 1 (the optimizer steps of the run); got "
            f"{total_steps!r}."
        )
    for what, value in (("warmup_steps", warmup_steps),
                        *((f"delay_steps[{k!r}]", v) for k, v in delays.items())):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{what} must be an int >= 0; got {value!r}.")
    if not 0.0 <= final_factor <= 1.0:
        raise ValueError(f"final_factor must be in [0, 1]; got {final_factor!r}.")

    def factor(delay: int) -> Any:
        def f(step: int) -> float:
            if step < delay:
                return 0.0
            ramp = min(1.0, (step - delay + 1) / (warmup_steps + 1))
            cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total_steps)))
            return ramp * (final_factor + (1.0 - final_factor) * cosine)

        return f

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor(delays.get(n, 0) if n is not None else 0) for n in names]
    )


# ------------------------------------------------------------------------------ factories

OptimizerFactory = Callable[[nn.Module, nn.Module], torch.optim.Optimizer]


@dataclass(frozen=True)
class SchedulerFactory:
    """``factory(optimizer) -> scheduler``, with when the trainer steps it.

    Attributes:
        build: Makes the scheduler for an optimizer.
        interval: ``"epoch"`` (after each epoch) or ``"step"`` (after each optimizer step).
    """

    build: Callable[[torch.optim.Optimizer], Any]
    interval: Literal["epoch", "step"] = "epoch"

    def __call__(self, optimizer: torch.optim.Optimizer) -> Any:
        return self.build(optimizer)


def adamw(
    *, encoder_lr: float = 1e-6, detector_lr: float = 1e-3, weight_decay: float = 1e-4
) -> OptimizerFactory:
    """The paper's AdamW as an optimizer factory (see :func:`default_optimizer`)."""
    for name, value in (("encoder_lr", encoder_lr), ("detector_lr", detector_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0; got {value!r}.")

    def factory(encoder: nn.Module, detector: nn.Module) -> torch.optim.Optimizer:
        return default_optimizer(
            encoder,
            detector,
            encoder_lr=encoder_lr,
            detector_lr=detector_lr,
            weight_decay=weight_decay,
        )

    return factory


def step_decay(*, milestones: Sequence[int] = (5,), gamma: float = 0.1) -> SchedulerFactory:
    """Step decay per epoch (see :func:`default_scheduler`); ``milestones=()`` is constant."""
    milestones = list(milestones)
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
        raise ValueError(f"milestones must be epochs (ints >= 1); got {milestones!r}.")
    return SchedulerFactory(
        lambda opt: default_scheduler(opt, milestones=milestones, gamma=gamma), "epoch"
    )


def warmup_cosine(
    *,
    total_steps: int,
    warmup_steps: int = 0,
    delay_steps: Mapping[str, int] | None = None,
    final_factor: float = 0.01,
) -> SchedulerFactory:
    """Per-step warm-up and cosine (see :func:`warmup_cosine_scheduler`), stepped per step."""
    return SchedulerFactory(
        lambda opt: warmup_cosine_scheduler(
            opt,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            delay_steps=delay_steps,
            final_factor=final_factor,
        ),
        "step",
    )
