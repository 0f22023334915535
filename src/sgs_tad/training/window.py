"""One optimizer step of :class:`~sgs_tad.SGSTrainer`: the accumulation window and its update.

Iterations add their gradients into ``.grad`` and their losses into a :class:`StepWindow`;
:func:`take_optimizer_step` then does, once per window, what every rank must do together:

1. one all-reduce of the window's flags and counters (non-finite, stop request, loss sum,
   loss count) and of the gradients (:class:`~sgs_tad.training.distributed.GradientReducer`);
2. divide the gradients by the window's own length (a window cut short by the end of an epoch
   or of an iterable is a mean over its own iterations, not over ``accumulation_steps``);
3. unscale (fp16), clip or measure the global norm, step, check the weights are finite;
4. zero every trainable parameter's gradient and count a skipped step if there was one;
5. average the detector's floating-point buffers (running statistics) over ranks.

fp16: a step the :class:`~torch.amp.GradScaler` skips (an inf in a gradient; it then halves the
scale) is a skipped step like any other: it is counted and a per-step LR schedule does not
advance. An overflow of the feature gradient alone (``window.found_inf``) is shown to the
scaler as an inf gradient, so that it skips the step and backs off as for any other overflow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sgs_tad.engine.overflow import show_overflow
from sgs_tad.training.distributed import all_reduce_buffers
from sgs_tad.training.policies import check_finite_parameters, clip_or_measure

if TYPE_CHECKING:
    from sgs_tad.training.trainer import SGSTrainer

__all__ = ["StepWindow", "take_optimizer_step"]


@dataclass
class StepWindow:
    """What the iterations of one accumulation window add up (reset after each step).

    Attributes:
        bad: A non-finite loss or gradient, or an unreadable video after the backward: the
            step is skipped (and the rest of the window not computed).
        found_inf: fp16 with a GradScaler: ``feats.grad`` overflowed (a scaling overflow, not
            a broken loss). The scaler is shown an inf at the step, so it skips the step and
            backs the scale off; the rest of the window is not computed.
        loss_sum: Sum of the iterations' losses.
        losses: Iterations that contributed a loss.
        parts: Sums of the loss dict's other scalar entries.
        snippets: Snippets encoded in the window (for snippets/s).
        iterations: Iterations run so far (the detector step's ``info.iteration``).
        start: ``time.perf_counter()`` at the window's start.
    """

    bad: bool = False
    found_inf: bool = False
    loss_sum: float = 0.0
    losses: int = 0
    parts: dict[str, float] = field(default_factory=dict)
    snippets: int = 0
    iterations: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, parts: dict[str, float], snippets: int) -> None:
        """Count one iteration whose gradient is now in ``.grad``."""
        self.loss_sum += loss
        self.losses += 1
        self.iterations += 1
        self.snippets += snippets
        for key, part in parts.items():
            self.parts[key] = self.parts.get(key, 0.0) + part


def take_optimizer_step(trainer: SGSTrainer, window: StepWindow) -> dict[str, Any]:
    """The single optimizer step of ``window`` (collective: every rank calls it together).

    Returns:
        The step's record for the metrics: epoch, loss, loss parts, learning rates, gradient
        norm, snippets/s, skipped steps so far and, on CUDA, peak memory.

    Raises:
        FloatingPointError: a non-finite gradient norm with ``nonfinite="raise"``, weights
            made non-finite by the step, or too many skipped steps in a row.
    """
    t = trainer
    record: dict[str, Any] = {"epoch": t.epoch}
    with t.timer.phase("optimizer"):
        bad, stop, found_inf, loss_sum, n_losses = t.reducer.reduce(
            [float(window.bad), float(t._stop_requested), float(window.found_inf),
             window.loss_sum, window.losses]
        )  # fmt: skip
        # Stop only on the agreed (all-reduced) flag: a SIGTERM that reaches one rank after the
        # collective is honoured at the next step, on every rank together.
        t._stop_agreed = stop > 0 or (t.world_size == 1 and t._stop_requested)
        stepped = False
        if bad == 0 and n_losses > 0:
            if t.scaler is not None:
                if found_inf > 0:  # on every rank: the flag was summed over ranks
                    show_overflow(p for g in t.optimizer.param_groups for p in g["params"])
                t.scaler.unscale_(t.optimizer)
            # The reduction averaged the per-rank sums over ranks; dividing by the mean count
            # makes it the mean over every iteration of the window, however short.
            mean_count = n_losses / t.world_size
            if mean_count != 1:
                for p in t.parameters:
                    if p.grad is not None:
                        p.grad.div_(mean_count)
            record["grad_norm"] = float(clip_or_measure(t.parameters, t.max_grad_norm))
            if not math.isfinite(record["grad_norm"]) and t.scaler is None:
                if t.nonfinite == "raise":
                    raise FloatingPointError(
                        f"non-finite gradient norm at step {t.step}; pass nonfinite='skip' to"
                        " skip such steps."
                    )
            else:
                for cb in t.callbacks:
                    cb.on_before_optimizer_step(t)
                if t.scaler is not None:
                    scale = t.scaler.get_scale()
                    t.scaler.step(t.optimizer)
                    t.scaler.update()
                    # GradScaler skips a step whose gradients hold an inf without telling; it
                    # then multiplies the scale by its backoff factor (< 1), and only then.
                    stepped = t.scaler.get_scale() >= scale
                else:
                    t.optimizer.step()
                    stepped = True
                if stepped:
                    check_finite_parameters(t.parameters, t._names, step=t.step)
        # A window of only unreadable videos (n_losses == 0, not bad) is no skipped step.
        t.skips.record(skipped=bad > 0 or (n_losses > 0 and not stepped), step=t.step)
        # Zero once, after the single step of this window: every trainable parameter, not only
        # the optimizer's, or one left out of a custom optimizer would accumulate.
        t.optimizer.zero_grad(set_to_none=True)
        for p in t.parameters:
            p.grad = None
        # The detector's running statistics saw this rank's batches only: average them, so
        # every rank normalises alike and a checkpoint holds the average, not rank 0's.
        all_reduce_buffers(t.detector)
    t.step += 1
    # The schedule counts updates: a skipped step does not move it on.
    if t.scheduler is not None and t.scheduler_interval == "step" and stepped:
        t.scheduler.step()
    elapsed = time.perf_counter() - window.start
    record.update(
        loss=loss_sum / n_losses if n_losses else float("nan"),
        lr=[g["lr"] for g in t.optimizer.param_groups],
        snippets_per_s=window.snippets / elapsed if elapsed > 0 else 0.0,
        skipped_steps=t.skipped_steps,
    )
    for key, total in window.parts.items():
        record[key] = total / max(window.losses, 1)
    peak = t.timer.peak_memory()
    if peak is not None:
        record["peak_memory_bytes"] = peak
    return record
