"""Hooks into :class:`~sgs_tad.trainer.SGSTrainer`: subclass :class:`Callback`, override what
you need, pass ``callbacks=[...]``.

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

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import SGSTrainer

__all__ = ["Callback"]


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

    def on_step_end(self, trainer: SGSTrainer, metrics: Mapping[str, Any]) -> None:
        """After each optimizer step (or a skipped one); ``metrics`` as written to JSONL."""

    def on_epoch_end(self, trainer: SGSTrainer, epoch: int, metrics: Mapping[str, Any]) -> None:
        """After each epoch, with the evaluation metrics if an evaluation ran."""

    def on_checkpoint(self, trainer: SGSTrainer, path: Path) -> None:
        """After a checkpoint was written (rank 0 only)."""

    def on_fit_end(self, trainer: SGSTrainer) -> None:
        """When ``fit`` returns (also after a stop request)."""
