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
      dominates the global norm, and with it the clipping, shows (every ``every`` steps);
    * ``update/<part>``: ``||θ_after - θ_before|| / ||θ_before||`` over the part's trainable
      parameters, how far the optimizer step moved it (0 for a frozen part), every
      ``update_every`` steps.

    The norms are fused per part (``torch._foreach_norm``) and stay on the device until one
    read per measured step. The update needs the parameters before the step: on the steps
    that measure it they are copied into buffers allocated once (one fused copy, no
    allocation per step); ``update_every`` (default 10) keeps that copy off most steps.
    :meth:`summary` gives medians over the run.

    Example:
        >>> stats = GradientStats({"encoder": nn.Linear(2, 2)})
        >>> stats.summary()
        {}
    """

    def __init__(
        self, parts: Mapping[str, nn.Module], *, every: int = 1, update_every: int = 10
    ) -> None:
        if not parts:
            raise ValueError("GradientStats needs at least one part, e.g. {'encoder': encoder}.")
        for name, value in (("every", every), ("update_every", update_every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1 (steps between measurements); got {value}.")
        self.parts = dict(parts)
        self.every = every
        self.update_every = update_every
        self.history: dict[str, list[float]] = {}
        self._grad: dict[str, torch.Tensor] | None = None
        self._before: dict[str, list[torch.Tensor]] = {}
        self._size: dict[str, torch.Tensor] = {}
        self._buffers: dict[str, list[torch.Tensor]] = {}

    def _trainable(self, part: str) -> list[nn.Parameter]:
        return [p for p in self.parts[part].parameters() if p.requires_grad]

    def _snapshot(self, part: str, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """``params``' values, copied into this part's buffers (reallocated on a change only)."""
        buffers = self._buffers.get(part)
        if buffers is None or [(b.shape, b.dtype, b.device) for b in buffers] != [
            (p.shape, p.dtype, p.device) for p in params
        ]:
            buffers = self._buffers[part] = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            torch._foreach_copy_(buffers, [p.detach() for p in params])
        return buffers

    def on_before_optimizer_step(self, trainer: SGSTrainer) -> None:
        grads_now = trainer.step % self.every == 0
        update_now = trainer.step % self.update_every == 0
        self._grad, self._before, self._size = ({} if grads_now else None), {}, {}
        for part in self.parts:
            params = self._trainable(part)
            device = params[0].device if params else torch.device("cpu")
            if grads_now:
                grads = [p.grad.detach() for p in params if p.grad is not None]
                self._grad[part] = _norm(grads, device)  # type: ignore[index]
            if update_now and params:
                self._before[part] = self._snapshot(part, params)
                self._size[part] = _norm(self._before[part], device)

    def on_step_end(self, trainer: SGSTrainer, metrics: MutableMapping[str, Any]) -> None:
        if self._grad is None and not self._before:
            return
        # clip_grad_norm_ multiplied every gradient by min(1, max_norm / (norm + 1e-6)).
        total, max_norm = metrics.get("grad_norm"), trainer.max_grad_norm
        coef = 1.0
        if max_norm is not None and total is not None and math.isfinite(total):
            coef = min(1.0, max_norm / (total + 1e-6))
        norms: list[torch.Tensor] = []
        keys: list[str] = []
        for part in self.parts:
            if self._grad is not None:
                keys.append(f"grad_norm/{part}")
                norms.append(self._grad[part])
            if part in self._before:
                before = self._before[part]
                with torch.no_grad():  # the buffers become before - after, in place
                    torch._foreach_sub_(before, [p.detach() for p in self._trainable(part)])
                keys += [f"moved/{part}", f"size/{part}"]
                norms += [_norm(before, before[0].device), self._size[part]]
        values = dict(zip(keys, torch.stack(norms).tolist())) if norms else {}  # one read
        for part in self.parts:
            record: dict[str, float] = {}
            if self._grad is not None:
                record[f"grad_norm/{part}"] = (
                    values[f"grad_norm/{part}"] / coef if coef > 0 else math.nan
                )
            if f"moved/{part}" in values:
                moved, size = values[f"moved/{part}"], values[f"size/{part}"]
                record[f"update/{part}"] = moved / size if size > 0 else 0.0
            elif self._before:  # measured this step, but the part has no trainable parameter
                record[f"update/{part}"] = 0.0
            metrics.update(record)
            for key, value in record.items():
                self.history.setdefault(key, []).append(value)
        self._grad, self._before, self._size = None, {}, {}

    def summary(self) -> dict[str, float]:
        """Median over the measured steps of each ``grad_norm/<part>`` and ``update/<part>``."""
        return {k: statistics.median(v) for k, v in self.history.items() if v}


def _norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm of ``tensors`` together, in float32, on ``device`` (0 if none)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
