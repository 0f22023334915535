"""What the trainer does when a step goes wrong: non-finite values, runs that stopped learning.

* :func:`clip_or_measure` — the global gradient norm, clipped when asked.
* :func:`check_finite_parameters` — after ``optimizer.step()``: a finite gradient can still
  overflow the weights; without this check the detector's next forward crashes far from the
  cause (an index of ``-2**63`` in the RoI pooling, say).
* :class:`SkipCounter` — skipped steps in all and in a row; too many in a row is an error, so
  a run whose every loss is NaN does not end as if it had trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "SkipCounter",
    "check_choice",
    "check_finite_parameters",
    "check_int",
    "clip_or_measure",
]


def check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    """Refuse ``value`` unless it is an int >= ``minimum`` (or ``None`` when allowed)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"None or an int >= {minimum}" if allow_none else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}.")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")


def clip_or_measure(parameters: Sequence[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients of ``parameters``, clipping to ``max_norm`` if given."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm is not None:
        return nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    )


def check_finite_parameters(
    parameters: Sequence[nn.Parameter], names: Mapping[int, str], *, step: int
) -> None:
    """Raise :class:`FloatingPointError` naming the parameters that are not finite.

    One reduction per tensor and a single host sync, so it is cheap next to a training step.
    """
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in parameters])
    if bool(finite.all()):
        return
    bad = [names.get(id(p), "?") for p, ok in zip(parameters, finite.tolist()) if not ok]
    raise FloatingPointError(
        f"optimizer step {step} made parameters non-finite: {bad[:5]}"
        f"{' …' if len(bad) > 5 else ''} ({len(bad)} tensors). The gradient was finite, so the"
        " update overflowed: lower the learning rate, set max_grad_norm, or check a custom"
        " optimizer. The last checkpoint holds the weights from before."
    )


class SkipCounter:
    """Skipped optimizer steps, in all and in a row.

    Args:
        limit: raise after this many skipped steps in a row (``None``: never).
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0
        self.in_a_row = 0

    def record(self, *, skipped: bool, step: int) -> None:
        """Count one optimizer step; raise :class:`FloatingPointError` past the limit."""
        if not skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.limit is not None and self.in_a_row >= self.limit:
            raise FloatingPointError(
                f"{self.in_a_row} optimizer steps in a row were skipped (non-finite loss or"
                f" gradient), the last at step {step}; {self.total} in all. The run is not"
                " training: lower the learning rate, check the loss and the input data, or"
                " raise max_consecutive_skips."
            )
