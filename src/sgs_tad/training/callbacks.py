"""Hooks into :class:`~sgs_tad.SGSTrainer`: subclass :class:`Callback`, override what you need,
pass ``callbacks=[...]``.

Every hook receives the trainer, so a callback can read ``trainer.step``, ``trainer.epoch``,
the modules and the optimizer, or call ``trainer.request_stop()``.

Example:
    >>> class StopAt(Callback):
    ...     def __init__(self, step):
    ...         self.at = step
    ...     def on_step_end(self, trainer, metrics):
    ...         if trainer.step >= self.at:
    ...             trainer.request_stop()
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from sgs_tad.training.trainer import SGSTrainer

__all__ = ["Callback", "GradientStats"]


class Callback:
    """Base class with no-op hooks, called on every rank in this order per step:
    ``on_batch_start`` (each iteration), ``on_before_optimizer_step`` (after the gradient
    reduction, unscaling and clipping), ``on_step_end`` (after ``optimizer.step()``)."""

    def on_fit_start(self, trainer: SGSTrainer) -> None:
        """Before the first epoch (after a resume was loaded)."""

    def on_epoch_start(self, trainer: SGSTrainer, epoch: int) -> None:
        """At the start of each epoch (0-based)."""

    def on_batch_start(self, trainer: SGSTrainer, batch: Mapping[str, Any]) -> None:
        """Before each iteration's phase 1."""

    def on_before_optimizer_step(self, trainer: SGSTrainer) -> None:
        """Gradients are final (reduced, unscaled, clipped); the step has not run."""

    def on_step_end(self, trainer: SGSTrainer, metrics: MutableMapping[str, Any]) -> None:
        """After each optimizer step (or a skipped one), before ``metrics`` is written to JSONL
        and TensorBoard: entries a callback adds to it are logged with the step's own."""

    def on_epoch_end(self, trainer: SGSTrainer, epoch: int, metrics: Mapping[str, Any]) -> None:
        """After each epoch, with the evaluation metrics if an evaluation ran."""

    def on_checkpoint(self, trainer: SGSTrainer, path: Path) -> None:
        """After a checkpoint was written (rank 0 only)."""

    def on_fit_end(self, trainer: SGSTrainer) -> None:
        """When ``fit`` returns (also after a stop request)."""


class GradientStats(Callback):
    """Each part's gradient norm and relative update size per optimizer step, in the metrics.

    For every named part (e.g. ``{"encoder": encoder, "detector": detector}``) it adds to the
    step's record:

    * ``grad_norm/<part>``: the L2 norm of the part's gradients *before* clipping (the trainer's
      ``max_grad_norm`` scales all parts by one factor; this undoes it), so a part whose gradient
      dominates the global norm, and with it the clipping, shows;
    * ``update/<part>``: ``||θ_after - θ_before|| / ||θ_before||`` over the part's trainable
      parameters, how far the optimizer step moved it (0 for a frozen part).

    The snapshot for the update costs one copy of the trainable parameters per measured step
    (``every`` > 1 measures fewer steps). :meth:`summary` gives medians over the run.

    Example:
        >>> stats = GradientStats({"encoder": nn.Linear(2, 2)})
        >>> stats.summary()
        {}
    """

    def __init__(self, parts: Mapping[str, nn.Module], *, every: int = 1) -> None:
        if not parts:
            raise ValueError("GradientStats needs at least one part, e.g. {'encoder': encoder}.")
        if every < 1:
            raise ValueError(f"every must be >= 1 (steps between measurements); got {every}.")
        self.parts = dict(parts)
        self.every = every
        self.history: dict[str, list[float]] = {}
        self._grad: dict[str, float] | None = None
        self._before: dict[str, list[torch.Tensor]] = {}

    def _trainable(self, part: str) -> list[nn.Parameter]:
        return [p for p in self.parts[part].parameters() if p.requires_grad]

    def on_before_optimizer_step(self, trainer: SGSTrainer) -> None:
        if trainer.step % self.every:
            self._grad = None
            return
        self._grad, self._before = {}, {}
        for part in self.parts:
            params = self._trainable(part)
            grads = [p.grad.detach().float() for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else 0
            self._grad[part] = float(norm)
            self._before[part] = [p.detach().clone() for p in params]

    def on_step_end(self, trainer: SGSTrainer, metrics: MutableMapping[str, Any]) -> None:
        if self._grad is None:
            return
        # clip_grad_norm_ multiplied every gradient by min(1, max_norm / (norm + 1e-6)).
        total, max_norm = metrics.get("grad_norm"), trainer.max_grad_norm
        coef = 1.0
        if max_norm is not None and total is not None and math.isfinite(total):
            coef = min(1.0, max_norm / (total + 1e-6))
        for part, before in self._before.items():
            after = self._trainable(part)
            moved = size = 0.0
            if before:  # both sums reduced on the device, then one host sync per part
                sums = torch.stack([
                    torch.stack([(a.detach() - b).float().square().sum()
                                 for a, b in zip(after, before)]).sum(),
                    torch.stack([b.float().square().sum() for b in before]).sum(),
                ]).tolist()  # fmt: skip
                moved, size = sums
            values = {
                f"grad_norm/{part}": self._grad[part] / coef if coef > 0 else math.nan,
                f"update/{part}": math.sqrt(moved / size) if size > 0 else 0.0,
            }
            metrics.update(values)
            for key, value in values.items():
                self.history.setdefault(key, []).append(value)
        self._grad, self._before = None, {}

    def summary(self) -> dict[str, float]:
        """Median over the measured steps of each ``grad_norm/<part>`` and ``update/<part>``."""
        return {k: statistics.median(v) for k, v in self.history.items() if v}
